"""The prediction forward on the CPU: Xception with BatchNorm folded and oneDNN post-ops fused.

An eager forward runs ~150 small ops: each conv reorders its weight into oneDNN's blocked layout on
every call, and every BN, ReLU and residual sum reads and writes the whole activation once more.
:class:`FusedXception` is a prediction copy that does what ``torch.compile(..., freezing=True)``
(inductor's mkldnn fusion passes) does for this network, without a compiler:

- BN folded into the conv before it: ``w' = w * g / sqrt(v + eps)``, ``b' = beta - mean * g / sqrt(v + eps)``
  (computed in float64, so folding moves the logits by ~1e-7 relative);
- every conv a ``torch.ops.mkldnn._convolution_pointwise`` call on a weight packed once per input
  shape (see :meth:`PackedConv.packed_for`);
- the ReLU that opens the next separable unit applied by the conv as a post-op, and the residual sum
  as a binary post-op (``other + conv(x)`` in one pass);
- TF 'same' 3x3/2 max-pool as one ``max_pool2d``: on an even size TF pads one -inf row after, which is
  ``ceil_mode=True`` without padding; on an odd size it pads one on each side.

Measured against the eager network (``bench/bench_forward.py``, ``bench/bench_peer.py``):
about the same speed as the compiled graph, outputs within ~1e-6 relative, and no 30-180 s compile.

Once its weights are packed for an input size, the copy's forward is recorded as one TorchScript
graph (:meth:`FusedXception.trace`), which takes the packed weights for each batch size as inputs.
Run op by op from Python, a forward takes the GIL back ~90 times, once after each op; in a server
where 30 students' page scripts hold the GIL in turn, each take can wait a switch interval (5 ms)
or more, and a 40 ms forward took 0.35-0.8 s. A graph call
releases the GIL once for the whole forward. The graph runs the same oneDNN calls on the same packed
weights, so its outputs are the Python forward's, bit for bit (tested).
The capture and attribution paths keep the eager, hookable network; only predictions and
embeddings (the pooled features a taught head reads) use this copy.

:class:`Predictor` is what ``LoadedModel.logits`` and ``LoadedModel.embedding`` run: the eager
network until the fused copy is ready for the input size, then the fused copy. The copy is built
and its weights packed in a background thread at the lowest CPU priority after the first answer at
that size, so the first prediction is never slower than before and a waiting request always gets
the cores first.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings

import torch
import torch.nn.functional as F

from .device import fast_precision
from .inference import batch_limit
from .model import MIN_INPUT_SIZE, Xception

MAX_SIZES = 3  # input sizes packed per model and precision (fp32 ~83 MB a layout, bf16 ~42 MB; one image and a
# batch may take two: +53 MB at 150 px on an AVX2 CPU); other sizes run eagerly

_mkldnn = torch.ops.mkldnn

# The two oneDNN calls as TorchScript functions: a trace records calls to script functions, while
# it cannot record the ``Scalar?[]`` argument of the ops called from Python.
_SCRIPT = """
def conv(x: Tensor, w: Tensor, b: Optional[Tensor], padding: List[int], stride: List[int], groups: int,
         act: str) -> Tensor:
    return torch.ops.mkldnn._convolution_pointwise(x, w, b, padding, stride, [1, 1], groups, act,
                                                   torch.jit.annotate(List[Optional[number]], [None]), "")

def conv_add(x: Tensor, other: Tensor, w: Tensor, b: Optional[Tensor], padding: List[int], stride: List[int],
             groups: int) -> Tensor:
    return torch.ops.mkldnn._convolution_pointwise(x, other, w, b, padding, stride, [1, 1], groups, "add", 1.0,
                                                   None, torch.jit.annotate(List[Optional[number]], [None]), None)
"""


@functools.cache
def _ops():
    return torch.jit.CompilationUnit(_SCRIPT)


def supported(device: torch.device) -> bool:
    """Whether this torch build has the oneDNN ops the fused copy calls (CPU builds with mkldnn)."""
    return (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(_mkldnn, "_convolution_pointwise") and hasattr(_mkldnn, "_reorder_convolution_weight")
            and hasattr(_mkldnn, "_get_mkldnn_serialized_md") and hasattr(torch.jit, "CompilationUnit"))


class _Tracing(threading.local):
    """How :meth:`FusedXception.trace` sees the packed weights, in the recording thread only: first
    each conv and the shape of its input, in call order (``seen``), then the graph inputs that stand
    for the weights (``inputs``); oneDNN's packed (opaque) tensors cannot be graph constants."""

    seen: list | None = None
    inputs: dict | None = None


_tracing = _Tracing()


def fold_bn(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``bn(conv(x))`` as one conv (Ioffe & Szegedy 2015, inference form)."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    bias = bn.bias.double() - bn.running_mean.double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.double() * scale
    return weight.float(), bias.float()


class PackedConv:
    """A conv (+ folded BN) run by oneDNN, its weight reordered once per input shape."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1, padding: int = 0,
                 groups: int = 1):
        self.weight, self.bias = weight.detach().contiguous(), bias
        self.stride, self.padding, self.groups = [stride, stride], [padding, padding], groups
        self.packed: dict[tuple[int, ...], torch.Tensor] = {}  # (N, C, H, W) of the input -> packed weight

    def packed_for(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The weight packed for inputs of ``shape`` (N, C, H, W), packed on first use.

        oneDNN picks the weight's layout for the whole input shape, batch size included, and a conv
        fed another shape than its weight was packed for runs far slower: on an AVX2 CPU at 150 px,
        26 of the 74 convs take another layout for one image than for two or more, and a batch of 8
        on weights packed for one image took 2.8x as long per image as one image alone
        (bench/bench_queue.py). So each shape gets its own; shapes whose layouts are the same share
        one tensor, so memory holds each layout once.
        """
        w = self.packed.get(shape)
        if w is None:
            w = _mkldnn._reorder_convolution_weight(self.weight, self.padding, self.stride, [1, 1], self.groups,
                                                    list(shape))
            layout = _mkldnn._get_mkldnn_serialized_md(w)
            # a copy of the items: the packing thread may add another size's while a request reads
            w = next((p for s, p in list(self.packed.items())
                      if s[1:] == shape[1:] and torch.equal(_mkldnn._get_mkldnn_serialized_md(p), layout)), w)
            self.packed[shape] = w
        return w

    def _weight(self, x: torch.Tensor) -> torch.Tensor:
        if _tracing.inputs is not None:
            return _tracing.inputs[self]
        shape = tuple(x.shape)
        if _tracing.seen is not None:
            _tracing.seen.append((self, shape))
        return self.packed_for(shape)

    def __call__(self, x: torch.Tensor, act: str = "none") -> torch.Tensor:
        """``act(conv(x))``, ``act`` one of oneDNN's post-ops ("none", "relu")."""
        return _ops().conv(x, self._weight(x), self.bias, self.padding, self.stride, self.groups, act)

    def add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``conv(x) + other`` in one pass (the residual sum as a binary post-op)."""
        return _ops().conv_add(x, other, self._weight(x), self.bias, self.padding, self.stride, self.groups)


def max_pool_same(x: torch.Tensor) -> torch.Tensor:
    """``MaxPooling2D(3, strides=2, padding='same')`` of (N, C, H, W) in one call; see the module docstring."""
    return F.max_pool2d(x, 3, 2, padding=(x.shape[-2] % 2, x.shape[-1] % 2), ceil_mode=True)


class FusedXception:
    """Inference-only copy of an eval-mode :class:`Xception` (CPU, channels_last).

    The copy owns folded weights (~83 MB in fp32) plus one packed set per input size it has run at;
    the classifier head (pool, Dense, Dropout: <1% of the work) is the original module, run in fp32.
    ``dtype=torch.bfloat16`` is the fast mode: weights and activations in bf16 (oneDNN uses AMX or
    AVX512-BF16 where the CPU has them; elsewhere bf16 is emulated and slower than fp32).
    """

    def __init__(self, net: Xception, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        stem = net.entry_flow.block1
        self.stem = (PackedConv(*fold_bn(stem.conv1, stem.conv1_bn), stride=2),
                     PackedConv(*fold_bn(stem.conv2, stem.conv2_bn)))
        # blocks 2-13: per unit (ReLU first?, depthwise, pointwise+BN), and the strided shortcut or None
        self.blocks = []
        for flow in (net.entry_flow, net.middle_flow, net.exit_flow):
            for name, block in flow.named_children():
                if name in ("block1", "block14"):
                    continue
                units = [(hasattr(block, f"sepconv{k}_act"),
                          *self._separable(getattr(block, f"sepconv{k}"), getattr(block, f"sepconv{k}_bn")))
                         for k in range(1, block.num_units + 1)]
                shortcut = (PackedConv(*fold_bn(block.residual, block.residual_bn), stride=2)
                            if hasattr(block, "pool") else None)
                self.blocks.append((units, shortcut))
        tail = net.exit_flow.block14
        self.tail = (self._separable(tail.sepconv1, tail.sepconv1_bn), self._separable(tail.sepconv2, tail.sepconv2_bn))
        self.head = net.head
        # input (H, W) -> the forward traced at that size, and each conv with the (C, H, W) of its input
        self.graphs: dict[tuple[int, int], tuple[torch.jit.ScriptFunction, list[tuple[PackedConv, tuple]]]] = {}
        self._inputs: dict[tuple[int, int, int], list[torch.Tensor]] = {}  # (N, H, W) -> the graph's weights
        if dtype != torch.float32:
            for conv in self.convs():  # folded in float64 first, rounded once
                conv.weight = conv.weight.to(dtype)
                conv.bias = None if conv.bias is None else conv.bias.to(dtype)

    @staticmethod
    def _separable(sep, bn) -> tuple[PackedConv, PackedConv]:
        depthwise = PackedConv(sep.depthwise.weight, None, padding=sep.depthwise.padding[0],
                               groups=sep.depthwise.groups)
        return depthwise, PackedConv(*fold_bn(sep.pointwise, bn))

    def convs(self) -> list[PackedConv]:
        out = list(self.stem)
        for units, shortcut in self.blocks:
            out += [c for _, dw, pw in units for c in (dw, pw)] + ([shortcut] if shortcut else [])
        return out + [c for unit in self.tail for c in unit]

    def sizes(self) -> set[tuple[int, int]]:
        """Input sizes whose weights are packed."""
        return {shape[2:] for shape in self.stem[0].packed}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float32 on the CPU -> float32 logits, as ``Xception.forward``."""
        return self.head(self.forward_features(x).float())

    @torch.no_grad()
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float32 on the CPU -> ``block14_sepconv2_act`` (N, 2048, h, w), channels_last,
        in the copy's dtype, as ``Xception.forward_features``: the traced graph where :meth:`trace`
        has recorded one for this size, else op by op."""
        traced = self.graphs.get(tuple(x.shape[-2:]))
        if traced is not None:
            return traced[0](x, *self.weights_for(x.shape))
        return self._forward_features(x)

    def weights_for(self, shape: torch.Size | tuple[int, ...]) -> list[torch.Tensor]:
        """The packed weights the graph traced at ``shape``'s size takes for a batch of ``shape``
        (N, 3, H, W), packed now where they are not yet (``pack`` does it ahead)."""
        key = (shape[0], *shape[-2:])
        weights = self._inputs.get(key)
        if weights is None:
            weights = self._inputs[key] = [conv.packed_for((shape[0], *rest))
                                           for conv, rest in self.graphs[key[1:]][1]]
        return weights

    def pack(self, shape: torch.Size | tuple[int, ...], batches: range) -> None:
        """Pack the weights for batches of ``batches`` images of ``shape``'s size (traced already)."""
        for n in batches:
            self.weights_for((n, *shape[1:]))

    @torch.no_grad()
    def trace(self, shape: torch.Size | tuple[int, ...]) -> None:
        """Record the forward at ``shape``'s input size as one graph, which later calls of any batch
        size run whole (see the module docstring). Packs the weights for that size if needed."""
        x = torch.zeros(shape)
        _tracing.seen = []
        try:
            self._forward_features(x)
            convs = [(conv, s[1:]) for conv, s in _tracing.seen]
        finally:
            _tracing.seen = None
        weights = [conv.packed_for(tuple(x.shape[:1]) + s) for conv, s in convs]

        def forward(x: torch.Tensor, *packed: torch.Tensor) -> torch.Tensor:
            _tracing.inputs = dict(zip((conv for conv, _ in convs), packed))
            try:
                return self._forward_features(x)
            finally:
                _tracing.inputs = None

        with warnings.catch_warnings():
            # torch.jit.trace warns that it is deprecated for torch.compile / torch.export, whose CPU
            # paths need a C++ toolchain and minutes of compiling; and the trace notes that the max-pool
            # padding reads the input size, which is what a trace per size is for
            warnings.simplefilter("ignore")
            graph = torch.jit.trace(forward, (x, *weights), check_trace=False)
        for _ in range(2):  # TorchScript profiles a graph's first runs: pay for them here, not in a request
            graph(x, *weights)
        self.graphs[tuple(shape[-2:])] = (graph, convs)

    def _forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        conv1, conv2 = self.stem
        x = conv2(conv1(x, "relu"), "relu")
        for units, shortcut in self.blocks:
            y = x
            for k, (relu_first, depthwise, pointwise) in enumerate(units):
                if k == 0 and relu_first:
                    y = torch.relu(y)  # x itself stays un-ReLU'd: the shortcut needs it
                y = depthwise(y)
                if k < len(units) - 1:
                    y = pointwise(y, "relu")  # BN folded in; the next unit's ReLU as post-op
                elif shortcut is None:
                    y = pointwise.add(y, x)  # middle flow: identity shortcut
                else:
                    y = shortcut.add(x, max_pool_same(pointwise(y)))  # strided 1x1 conv + BN shortcut
            x = y
        for depthwise, pointwise in self.tail:
            x = pointwise(depthwise(x), "relu")
        return x


class Predictor:
    """The forward that predictions run (``LoadedModel.logits``): eager until a fused copy is ready.

    Shared by every ``LoadedModel`` view of one network (``with_input_size``, ``with_fast_mode``).
    Callers hold the model's lock around :meth:`__call__`; :meth:`prepare` runs without it, so
    packing weights for a new size never blocks a prediction.

    Fast mode (``fast=True``, off unless asked for): the bf16 copy on a CPU with native bf16, fp16
    autocast on CUDA; ``fast_precision`` says which, None where there is none.
    """

    def __init__(self, net: Xception, device: torch.device):
        self.net = net
        self.enabled = supported(device)
        self.fast_precision = fast_precision(device) if device.type != "cpu" or self.enabled else None
        self._copies: dict[torch.dtype, FusedXception] = {}
        self._ready: set[tuple[torch.dtype, tuple[int, int]]] = set()  # what __call__ may run fused
        self._state = threading.Lock()  # guards _copies, _ready, _queue, _worker
        self._queue: list[tuple[torch.dtype, tuple[int, ...]]] = []  # waiting to be prepared
        self._worker: threading.Thread | None = None

    def _dtype(self, fast: bool) -> torch.dtype:
        return torch.bfloat16 if fast and self.fast_precision == "bf16" else torch.float32

    def ready(self, size: int | tuple[int, int], fast: bool = False) -> bool:
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (self._dtype(fast), size) in self._ready

    def _copy_for(self, x: torch.Tensor, dtype: torch.dtype) -> FusedXception | None:
        """The fused copy in ``dtype`` if it is ready for ``x``'s size, else None (run eagerly)."""
        copy = self._copies.get(dtype)
        if copy is not None and (dtype, tuple(x.shape[-2:])) in self._ready and x.dtype == torch.float32 \
                and x.device.type == "cpu":
            return copy
        return None

    def __call__(self, x: torch.Tensor, fast: bool = False) -> torch.Tensor:
        """Logits of ``x``: a fused copy where ready (fp32: same numbers to ~1e-6 relative), else eager."""
        copy = self._copy_for(x, self._dtype(fast))
        if copy is not None:
            return copy(x)
        if fast and self.fast_precision == "fp16":
            with torch.autocast(x.device.type, torch.float16):
                return self.net(x).float()
        return self.net(x)

    def features(self, x: torch.Tensor, fast: bool = False) -> torch.Tensor:
        """``block14_sepconv2_act`` of ``x`` (N, 2048, h, w): what the classifier head reads, from a
        fused copy where ready (fp32: same numbers to ~1e-6 relative), else eager; in the forward's
        precision (bf16 or fp16 in fast mode)."""
        copy = self._copy_for(x, self._dtype(fast))
        if copy is not None:
            return copy.forward_features(x)
        if fast and self.fast_precision == "fp16":
            with torch.autocast(x.device.type, torch.float16):
                return self.net.forward_features(x)
        return self.net.forward_features(x)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2048) pooled features of ``x``, as ``net.forward_head(..., pre_logits=True)``: the fp32
        fused copy where ready (same numbers to ~1e-6 relative), else eager. Never fast mode's bf16:
        a head taught on embeddings must not change with a switch in the sidebar."""
        copy = self._copy_for(x, torch.float32)
        features = copy.forward_features(x) if copy is not None else self.net.forward_features(x)
        return self.net.forward_head(features, pre_logits=True)

    def prepare(self, shape: torch.Size | tuple[int, ...], fast: bool = False, wait: bool = False) -> None:
        """Make a fused copy ready for inputs of ``shape`` (N, 3, H, W), in the background.

        Runs at the lowest CPU priority (nice 19 on Linux) so that a prediction waiting in the eager
        path takes the cores first. ``wait=True`` blocks until done (tests, benchmarks).
        """
        shape, dtype = tuple(shape), self._dtype(fast)
        if not self.enabled or min(shape[-2:]) < MIN_INPUT_SIZE:
            return
        with self._state:
            mine = [s for d, s in self._ready if d == dtype] + [s for d, s in self._queue if d == dtype]
            if not any(s[-2:] == shape[-2:] for s in mine) and len(mine) < MAX_SIZES:
                self._queue.append((dtype, shape))
            if self._queue and (self._worker is None or not self._worker.is_alive()):
                # not a daemon (a thread inherits its creator's flag, and Streamlit's script threads are
                # daemons): the interpreter waits for the weights being packed (a daemon thread
                # still inside a torch op at exit aborts the process), and _work stops once the main thread has ended
                self._worker = threading.Thread(target=self._work, name="xviz-fuse", daemon=False)
                self._worker.start()
            worker = self._worker
        if wait and worker is not None:
            worker.join()

    def _work(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
        except (AttributeError, OSError):
            pass
        while threading.main_thread().is_alive():
            with self._state:
                if not self._queue:
                    return
                dtype, shape = self._queue[0]
            try:
                with torch.no_grad():
                    copy = self._copies.get(dtype) or FusedXception(self.net, dtype)
                    # packs every weight for this size. Not the head: it is the network's own module,
                    # and this thread does not hold the model's lock, so an attribution may have hooks
                    # on it right now (Guided Grad-CAM's failed on this pass's tensors and turned the
                    # fused forward off for the rest of the server's life)
                    copy.forward_features(torch.zeros(shape))
            except Exception as exc:  # a torch build whose oneDNN ops differ: predictions stay eager
                warnings.warn(f"xviz: the fused CPU forward is unavailable ({exc!r}); predictions run eagerly")
                with self._state:
                    self.enabled = False
                    self._queue.clear()
                return
            try:
                copy.trace(shape)
            except Exception as exc:  # a torch without torch.jit.trace: the copy runs op by op
                warnings.warn(f"xviz: the fused forward could not be traced ({exc!r}); it runs op by op")
            else:  # every batch the inference queue may send at this size, so none packs in a request
                with torch.no_grad():
                    copy.pack(shape, range(1, batch_limit(shape[-1]) + 1))
            with self._state:
                self._copies[dtype] = copy
                self._ready.add((dtype, shape[-2:]))
                self._queue.pop(0)
