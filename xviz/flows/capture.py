"""The capture: ONE hooked forward pass that keeps every map the flow views use (see xviz.flows),
plus each layer's statistics and channel orders."""

from __future__ import annotations

import threading
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..activations import capture, has_hooks
from ..model import Xception
from .structure import PlanEntry, view_plan

STORE_DTYPE = np.float16  # display precision of the cached maps (see the docstring of xviz.flows)

# -- the capture --------------------------------------------------------------------------------

@dataclass
class FlowCapture:
    """Everything the views show for one image, from one forward pass (read-only once built).

    Attributes:
        input_size: side of the network input in pixels.
        image: (S, S, 3) uint8, the picture the network saw (preprocessing undone).
        maps: {stored layer: (C, H, W) tensor of ``dtype``} (float16 unless asked otherwise), on the
            model's device (a GPU capture stays on the GPU: only what a view shows is copied
            back), in the network's memory layout. Read-only: shared by every session.
        plan: {layer: PlanEntry} of every layer that :meth:`map` can return, in forward order.
        bn: {BN layer: (scale, shift, terms)} float32 per channel; ``bn(y) = scale * y + shift``;
            ``terms`` = |beta| + |scale * mean|, the size of the intermediate terms of the network's
            own formula, which bounds how far the two ways of computing BN can differ.
        logits: (num_classes,) float32 of the same forward pass (empty for a backbone without head).
        features: (1, 2048, h, w) float32 ``block14_sepconv2_act`` of the same pass, exactly as the
            head read it (on the model's device): Grad-CAM at that layer starts from it
            (:func:`xviz.attributions.gradcam_from_features`).
        conv_roundoff: unit roundoff of the network's own convolutions (2^-24 in float32; 2^-11
            where CUDA ran them in TF32), used by the checks' tolerances.
    """

    input_size: int
    image: np.ndarray
    maps: dict[str, torch.Tensor]
    plan: dict[str, PlanEntry]
    bn: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    logits: np.ndarray
    features: torch.Tensor | None = None
    dtype: np.dtype = field(default=np.dtype(STORE_DTYPE))
    conv_roundoff: float = 2.0 ** -24

    @property
    def names(self) -> list[str]:
        return list(self.plan)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored maps (the BN vectors and the image add well under 1 MB)."""
        features = 0 if self.features is None else self.features.numel() * self.features.element_size()
        return sum(t.numel() * t.element_size() for t in self.maps.values()) + sum(
            sum(v.nbytes for v in vectors) for vectors in self.bn.values()) + self.image.nbytes + features

    def shape(self, name: str) -> tuple[int, int, int]:
        entry = self._entry(name)
        return tuple(self.maps[_root(self.plan, entry)].shape)

    def map(self, name: str) -> np.ndarray:
        """(C, H, W) float32 values of layer ``name``, stored or derived (BN or ReLU)."""
        entry = self._entry(name)
        if entry.stored:
            return self.maps[name].cpu().numpy().astype(np.float32)  # a copy: the cache stays intact
        src = self.map(entry.source)
        if entry.derive == "relu":
            return np.maximum(src, 0.0, out=src)
        scale, shift, _ = self.bn[name]
        src *= scale[:, None, None]
        src += shift[:, None, None]
        return src

    def channel(self, name: str, c: int) -> np.ndarray:
        """(H, W) float32 values of one channel of ``name``: cheaper than ``map(name)[c]``."""
        entry = self._entry(name)
        channels = self.shape(name)[0]
        if not 0 <= c < channels:
            raise IndexError(f"{name} has {channels} channels (0 to {channels - 1}); got {c}")
        if entry.stored:
            return self.maps[name][c].cpu().numpy().astype(np.float32)
        src = self.channel(entry.source, c)
        if entry.derive == "relu":
            return np.maximum(src, 0.0)
        scale, shift, _ = self.bn[name]
        return src * scale[c] + shift[c]

    def _entry(self, name: str) -> PlanEntry:
        entry = self.plan.get(name)
        if entry is None:
            raise KeyError(f"{name!r} is not among the captured layers; see FlowCapture.names")
        return entry


def _root(plan: dict[str, PlanEntry], entry: PlanEntry) -> str:
    while not entry.stored:
        entry = plan[entry.source]
    return entry.name


def _bn_affines(bns: dict[str, nn.BatchNorm2d]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Inference-mode BatchNorm as ``scale * y + shift`` per channel (float32), and |beta| + |scale * mean|.

    Computed where the weights live and copied to the host in one transfer (one GPU sync, not 100).
    """
    parts = []
    for bn in bns.values():
        scale = bn.weight.detach().float() / torch.sqrt(bn.running_var.float() + bn.eps)
        mean, beta = bn.running_mean.float(), bn.bias.detach().float()
        parts += [scale, beta - mean * scale, beta.abs() + (mean * scale).abs()]
    if not parts:
        return {}
    flat = torch.cat(parts).cpu().numpy()
    out, offset = {}, 0
    for name, bn in bns.items():
        c = bn.num_features
        out[name] = tuple(flat[offset + i * c: offset + (i + 1) * c] for i in range(3))
        offset += 3 * c
    return out


def _display(x: torch.Tensor, mean: float, std: float) -> np.ndarray:
    """(3, S, S) preprocessed input -> (S, S, 3) uint8 picture (as xviz.to_display, but cheap)."""
    pixels = ((x.detach().float() * std + mean).clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    return pixels.permute(1, 2, 0).contiguous().cpu().numpy()  # (3, S, S) -> (S, S, 3)


def capture_views(model, x: torch.Tensor, *, dtype=STORE_DTYPE) -> FlowCapture:
    """Run ONE forward pass of ``x`` and keep every map the flow views use (see the module docstring).

    Args:
        model: a :class:`xviz.LoadedModel`; its lock is held while the hooks are attached.
        x: (1, 3, S, S) preprocessed image (``model.preprocess(img)``).
        dtype: storage type of the maps; float16 (default) for display, float32 for exact numbers.

    Returns:
        a :class:`FlowCapture`; ~82 MB at 299 px in float16, ~19 MB at 150 px.
    """
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"expected one preprocessed image of shape (1, 3, S, S), got {tuple(x.shape)}")
    return capture_views_batch(model, x, dtype=dtype)[0]


def capture_views_batch(model, x: torch.Tensor, *, dtype=STORE_DTYPE) -> list[FlowCapture]:
    """:func:`capture_views` of N images in ONE forward pass: one :class:`FlowCapture` per image, the
    same maps as N single passes (the inference queue batches the captures a class asks for at once:
    at 150 px a pass of 4 costs ~0.75x of 4 single ones).

    Args:
        x: (N, 3, S, S) preprocessed images.
    """
    if x.dim() != 4 or x.shape[0] < 1 or x.shape[1] != 3:
        raise ValueError(f"expected preprocessed images of shape (N, 3, S, S), got {tuple(x.shape)}")
    net: Xception = model.net
    plan = view_plan(net)
    names = [e.name for e in plan if e.stored]
    n = x.shape[0]
    torch_dtype = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}[np.dtype(dtype)]

    device = next(net.parameters()).device
    with model.lock:
        features, logits, per_layer = _forward(net, names, x.to(device), torch_dtype)
    tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
    bn = _bn_affines({e.name: net.layer(e.name) for e in plan if e.derive == "bn"})
    pre = getattr(model, "preprocessing", None)
    mean, std = (pre.mean, pre.std) if pre is not None else (0.5, 0.5)
    entries = {e.name: e for e in plan}
    has_logits = logits.dim() == 2
    logits = logits.float().cpu().numpy() if has_logits else None
    return [FlowCapture(int(x.shape[-1]), _display(x[i], mean, std),
                        {name: maps[i] for name, maps in per_layer.items()}, entries, bn,
                        logits[i].copy() if has_logits else np.zeros(0, np.float32),
                        features[i:i + 1].float().clone(), np.dtype(dtype), 2.0 ** -11 if tf32 else 2.0 ** -24)
            for i in range(n)]


MAX_GRAPHS = 3  # recorded capture graphs kept per network: input sizes a class uses at once

# network -> {(H, W, dtype): the hooked forward recorded as a TorchScript graph, or None where
# recording failed (that network then captures op by op at that size)}
_graphs: "weakref.WeakKeyDictionary[Xception, dict[tuple, torch.jit.ScriptFunction | None]]" = \
    weakref.WeakKeyDictionary()
_graphs_guard = threading.Lock()


def _forward(net: Xception, names: list[str], x: torch.Tensor, dtype: torch.dtype):
    """(features, logits, {layer: per-image (C, H, W) maps}) of one hooked forward of ``x``.

    Each output is converted inside its hook, while it is still in cache, in the network's memory
    layout (channels-last): converting after the forward costs ~0.2x of a forward pass more, and to
    C order more still (bench/bench_capture.py). On the CPU the hooked forward is recorded once per
    input size and dtype as one TorchScript graph (``torch.jit.trace``; the same ops on the same
    kernels, so the same bits): run op by op, a capture takes the GIL back after each of its ~300
    ops, and while a class's page scripts take turns holding it a capture of 45 ms took seconds. A
    network with hooks attached (a user's own, or another method's) runs eagerly, so they fire.
    """
    key = (*x.shape[-2:], dtype)
    graph, recorded = None, None
    if x.device.type == "cpu" and not has_hooks(net):
        with _graphs_guard:
            graphs = _graphs.setdefault(net, {})
            if key not in graphs:
                graph, recorded = _record(net, names, x[:1], dtype)
                graphs[key] = graph
                while len(graphs) > MAX_GRAPHS:  # the oldest size goes first
                    del graphs[next(iter(graphs))]
            else:
                graph = graphs[key]
    with torch.no_grad():
        if recorded is not None and x.shape[0] == 1:
            outputs = recorded  # the recording pass was this image's own capture
        elif graph is not None:
            with torch.jit.optimized_execution(False):  # run the graph as recorded, no profiling runs
                outputs = graph(x)
        else:
            outputs = _hooked(net, names, dtype)(x)
    recorded = None
    features, logits, *maps = outputs
    del outputs
    # one copy per image, so that each capture owns its memory (the store evicts them one by one);
    # layer by layer, so that at most one layer's batch is held twice
    per_layer = {}
    for i, name in enumerate(names):
        batch, maps[i] = maps[i], None
        per_layer[name] = [batch[0]] if batch.shape[0] == 1 else [image.clone() for image in batch]
    return features, logits, per_layer


def _hooked(net: Xception, names: list[str], dtype: torch.dtype):
    """The eager hooked forward: x -> (features, logits, *each layer's (N, C, H, W) maps in ``dtype``)."""
    def forward(x: torch.Tensor):
        with capture(net, names, keep=lambda t: t.to(dtype, copy=True)) as store:
            features = net.forward_features(x)
            logits = net.forward_head(features)
        return (features, logits, *(store.pop(name) for name in names))
    return forward


def _record(net: Xception, names: list[str], x: torch.Tensor, dtype: torch.dtype):
    """(graph of the hooked forward, that recording pass's outputs) from one image ``x``: a trace
    keeps every intermediate alive until it ends, so a batch would cost its memory many times over.
    A network that cannot be recorded gets None and a warning, and captures op by op."""
    recorded = []

    def forward(x: torch.Tensor):
        outputs = _hooked(net, names, dtype)(x)
        recorded[:] = outputs
        return outputs

    try:
        with warnings.catch_warnings(), torch.no_grad():
            # trace warns that it is deprecated for torch.compile / torch.export, whose CPU paths need a
            # C++ toolchain and minutes of compiling; and that the TF-style padding reads the input
            # size, which is what a graph per size is for
            warnings.simplefilter("ignore")
            graph = torch.jit.trace(forward, (x,), check_trace=False)
    except Exception as exc:  # noqa: BLE001 - any failure: the eager capture still works
        warnings.warn(f"xviz: the feature-map capture could not be recorded as a graph ({exc!r}); "
                      "it runs op by op")
        return None, None
    return graph, tuple(recorded)


# -- per-layer statistics and channel order -----------------------------------------------------

@dataclass(frozen=True)
class LayerStats:
    """Numbers that describe one layer's output for one image."""

    shape: tuple[int, int, int]  # (C, H, W)
    zero_after_relu: float  # share of values <= 0: exactly the zeros for a ReLU layer, else what a ReLU would zero
    exact_zeros: float  # share of values that are exactly 0
    vmin: float
    vmax: float
    mean: float

    @property
    def spatial(self) -> str:
        return f"{self.shape[1]}×{self.shape[2]}"


def layer_stats(maps: np.ndarray) -> LayerStats:
    """Shape, sparsity and value range of a (C, H, W) map."""
    if maps.ndim != 3:
        raise ValueError(f"expected a (C, H, W) array, got shape {maps.shape}")
    n = maps.size
    return LayerStats(tuple(maps.shape), float(np.count_nonzero(maps <= 0) / n),
                      float(np.count_nonzero(maps == 0) / n), float(maps.min()), float(maps.max()),
                      float(maps.mean(dtype=np.float64)))


SORTS = {
    "index": "channel number",
    "mean": "mean activation, highest first",
    "sparsity": "sparsity, fewest zeros first",
    "sparsity_desc": "sparsity, most zeros first",
}


def channel_order(maps: np.ndarray, by: str = "index") -> np.ndarray:
    """Channel indices of a (C, H, W) map in the order ``by`` (a key of :data:`SORTS`).

    Sparsity counts values <= 0, i.e. what is zero after a ReLU. Ties keep channel order.
    """
    c = maps.shape[0]
    flat = maps.reshape(c, -1)
    if by == "index":
        return np.arange(c)
    if by == "mean":
        return np.argsort(-flat.mean(axis=1, dtype=np.float64), kind="stable")
    if by in ("sparsity", "sparsity_desc"):
        zeros = np.count_nonzero(flat <= 0, axis=1)
        return np.argsort(zeros if by == "sparsity" else -zeros, kind="stable")
    raise ValueError(f"unknown channel order {by!r}; choose one of {', '.join(SORTS)}")


