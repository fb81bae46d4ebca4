"""Where is the network looking? Grad-CAM and captum's attribution methods, plus the checks that say
whether a heatmap can be trusted.

Every method has one signature, ``fn(m, x, target=None, *, progress=None, **options) -> (H, W)``
(the layer methods also take ``layer=``), and :func:`attribute` dispatches on a method name. Larger
values mean "more evidence for ``target``"; :data:`METHODS` says which maps can be negative.

Attribution on a shared model: captum attaches hooks (forward hooks on the layer, backward hooks
on every ReLU for guided backprop), so every call holds ``m.lock`` for its whole duration, and every
hook is registered in ``try`` and removed in ``finally``. The network stays in eval mode with
``requires_grad=False`` on its parameters: gradients are taken w.r.t. inputs and activations only,
which is all attribution needs, and nothing here changes a parameter's flag.

Trust: :func:`deletion_curve` (remove the most relevant pixels first; a faithful map makes the
score fall faster than random removal) and :func:`randomisation_check` (Adebayo et al., 2018,
"Sanity Checks for Saliency Maps": randomise the top layers of a copy; a faithful map changes).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .activations import locked
from .errors import WeightsError
from .model import Xception

DEFAULT_LAYER = "block14_sepconv2_act"  # the Keras Grad-CAM example's layer: last conv output
DEFAULT_BATCH = 4  # images per internal forward/backward of the slow methods: bounds peak memory
# (IG keeps ~280 MiB of activations per image at 299 px for its backward; on a 2-core CPU batch 4 is as
# fast per image as batch 8 at 299 px, at half the memory, and nearly as fast at 150 px)
OCCLUSION_BATCH = 8  # occluded copies per forward: no backward, so activations are transient
SMOOTH_NOISE = 0.15  # SmoothGrad noise as a share of the input's value range (Smilkov et al.: 10-20%)

ProgressFn = Callable[[int, int], None]  # (evaluations done, evaluations in total)

# captum announces the ReLU hooks of guided backprop with a warning on every call; they are ours to
# manage (removed in captum's finally, checked by the tests), so the warning only adds noise
warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")


# -- inputs ---------------------------------------------------------------------------------------

def _net(m) -> Xception:
    return getattr(m, "net", m)


def _device(m) -> torch.device:
    return next(_net(m).parameters()).device


def _needs_grad(x: torch.Tensor) -> torch.Tensor:
    """A private leaf copy that requires grad, so captum never flips the caller's tensor's flag."""
    return x.clone().requires_grad_(True)


def as_input(m, x) -> torch.Tensor:
    """One image as the (1, 3, H, W) float tensor the network takes, on the model's device.

    ``x`` is a preprocessed tensor ((3, H, W) or (1, 3, H, W)) or a ``PIL.Image`` (preprocessed
    with ``m.preprocess``).
    """
    if isinstance(x, Image.Image):
        x = m.preprocess(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a PIL image or a preprocessed tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[:2] != (1, 3):
        raise ValueError(f"expected one image as a (1, 3, H, W) tensor, got shape {tuple(x.shape)}; "
                         "attribute one image at a time")
    return x.detach().to(_device(m), torch.float32)


def resolve_target(m, x: torch.Tensor, target: int | str | None) -> int:
    """Class index from an index, a label (case-insensitive) or None (the predicted class)."""
    t = _check_target(m, target)
    if t is None:
        with locked(m), torch.no_grad():
            return int(_net(m)(x).argmax(dim=1)[0])
    return t


def _check_target(m, target: int | str | None) -> int | None:
    """The target as a valid class index, or None (to be read off the logits)."""
    net = _net(m)
    if net.num_classes == 0:
        raise WeightsError("This model has no classifier head (a 'notop' backbone), so there is no "
                           "class score to explain. Load weights with a head to use attributions.")
    if target is None:
        return None
    if isinstance(target, str):
        labels = [label.lower() for label in getattr(m, "labels", [])]
        if target.lower() not in labels:
            raise ValueError(f"no class named {target!r}; pick one of the model's labels "
                             f"(e.g. {', '.join(getattr(m, 'labels', [])[:5])})")
        return labels.index(target.lower())
    target = int(target)
    if not 0 <= target < net.num_classes:
        raise ValueError(f"class index {target} is out of range: this model has {net.num_classes} classes")
    return target


def spatial_layers(net: Xception) -> list[str]:
    """Layers with a spatial output (everything before global average pooling), in forward order."""
    head = {name for name, _ in net.head.named_children()}
    return [name for name in net.layer_names() if name not in head]


def _check_layer(net: Xception, layer: str) -> torch.nn.Module:
    """The module of a layer Grad-CAM can use; KeyError for unknown names, ValueError for the head."""
    module = net.layer(layer)
    if layer not in spatial_layers(net):
        raise ValueError(f"Grad-CAM needs a layer with a spatial map; {layer!r} comes after global "
                         "average pooling. Pick a layer of the entry, middle or exit flow.")
    return module


def block_outputs(net: Xception) -> list[tuple[str, str]]:
    """(flow, Keras name of the block's output) for every block, entry flow to exit flow.

    These are the layers a Grad-CAM scrubber walks through: each residual block's sum and, in the
    blocks without one (the stem, block 14), each ReLU that hands its map to a separable conv or
    to the head: the stem's last ReLU and block 14's two activations.
    """
    units = net.units()
    residual = {u.block for u in units if u.kind == "add"}
    readers: dict[str, list] = {}
    for u in units:
        for i in u.inputs:
            readers.setdefault(i, []).append(u)
    return [(u.flow, u.name) for u in units if u.kind == "add" or (
        u.kind == "relu" and u.block not in residual
        and any(r.kind == "depthwise" or r.flow == "head" for r in readers.get(u.name, [])))]


# -- Grad-CAM -------------------------------------------------------------------------------------

def _layer_activation_and_gradient(net: Xception, layer: str, x: torch.Tensor,
                                   target: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(A, dy/dA, target) at ``layer`` for class score ``y = logits[target]`` (None: the top class),
    with autograd only after A.

    The prefix up to ``layer`` runs under ``no_grad``: the hook turns its output into a fresh leaf
    and switches grad mode on, so the graph (and the backward) covers only the layers after A.
    ``torch.no_grad``'s exit restores the caller's grad mode, even on an exception.
    """
    module = _check_layer(net, layer)
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise ValueError(f"Grad-CAM needs a layer with a spatial map; {layer!r} has none "
                             "(pick a layer before avg_pool)")
        leaf = output.detach().requires_grad_(True)
        store["a"] = leaf
        torch.set_grad_enabled(True)
        return leaf

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = net(x)
    finally:
        handle.remove()
    if "a" not in store:
        raise RuntimeError(f"layer {layer!r} was not reached by the forward pass")
    if target is None:
        target = int(logits.argmax(dim=1)[0])
    (grad,) = torch.autograd.grad(logits[:, target].sum(), store["a"])
    return store["a"].detach(), grad, target


def gradcam(m, x, target: int | str | None = None, layer: str = DEFAULT_LAYER, *,
            progress: ProgressFn | None = None) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., 2017) of one image for one class, at any spatial layer.

    The map is ReLU(sum_k alpha_k A^k) with alpha_k the spatial mean of dy/dA^k, where y is the
    class's logit and A^k the k-th channel of ``layer``'s output, upsampled bilinearly to the input.

    Args:
        m: a :class:`xviz.LoadedModel` (its lock is held) or a bare :class:`xviz.model.Xception`.
        x: one preprocessed image, (1, 3, H, W) or (3, H, W), or a ``PIL.Image``.
        target: class index, label, or None for the predicted class.
        layer: Keras name of any layer before ``avg_pool``; late layers are class-specific but
            coarse (10x10 at 299 px), early ones sharp but hardly class-specific.
        progress: called with (1, 1) when done (one pass; for a uniform signature).

    Returns:
        (H, W) float32 CPU tensor at input resolution, >= 0, not normalised.

    Example:
        >>> m = xviz.load_model("kitchenware")
        >>> heat = xviz.gradcam(m, m.preprocess(img), "cup")
        >>> heat.shape
        torch.Size([150, 150])
    """
    x = as_input(m, x)
    net = _net(m)
    t = _check_target(m, target)
    with locked(m):
        a, grad, t = _layer_activation_and_gradient(net, layer, x, t)
    cam = _cam(a, grad)
    if progress:
        progress(1, 1)
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0].float().cpu()


def _cam(a: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    alpha = grad.mean(dim=(2, 3), keepdim=True)  # (1, C, h, w) -> (1, C, 1, 1)
    return F.relu((alpha * a).sum(dim=1, keepdim=True))  # (1, C, h, w) -> (1, 1, h, w)


# -- captum methods -------------------------------------------------------------------------------

class _Counted(torch.nn.Module):
    """The network as captum's forward function, reporting how many images it has evaluated."""

    def __init__(self, net: Xception, total: int, progress: ProgressFn | None):
        super().__init__()
        self.net, self.total, self.progress, self.done = net, total, progress, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        self.done += x.shape[0]
        if self.progress:
            self.progress(min(self.done, self.total), self.total)
        return out


@contextmanager
def _seeded(seed: int, device: torch.device | None = None):
    """Seed torch's RNG for the block and restore it after: noise is reproducible, and neither
    disturbs nor depends on anyone else's use of the global generator (CPU, and ``device``'s if CUDA)."""
    cuda = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.manual_seed(seed)
        yield


def guided_gradcam(m, x, target: int | str | None = None, layer: str = DEFAULT_LAYER, *,
                   progress: ProgressFn | None = None) -> torch.Tensor:
    """Guided Grad-CAM: guided backprop (pixel-sharp) times the upsampled Grad-CAM (class-specific).

    Through ``captum.attr.GuidedGradCam``; the channel map is reduced with max |.| over RGB.

    Args:
        m, x, target, layer: as in :func:`gradcam`.
        progress: called with (done, 2) after each of the two passes.

    Returns:
        (H, W) float32 CPU tensor, >= 0.

    Example:
        >>> heat = xviz.attributions.guided_gradcam(m, m.preprocess(img), "fork")
    """
    from captum.attr import GuidedGradCam

    x = as_input(m, x)
    net = _net(m)
    with locked(m):
        t = resolve_target(m, x, target)
        fn = _Counted(net, 2, progress)
        attr = GuidedGradCam(fn, _check_layer(net, layer)).attribute(_needs_grad(x), target=t, interpolate_mode="bilinear")
    return attr.detach().abs().amax(dim=1)[0].float().cpu()  # (1, 3, H, W) -> (H, W)


def saliency(m, x, target: int | str | None = None, *, progress: ProgressFn | None = None) -> torch.Tensor:
    """Vanilla gradient saliency (Simonyan et al., 2014): max over RGB of |d logit / d pixel|.

    Args:
        m, x, target: as in :func:`gradcam`.
        progress: called with (1, 1) when done.

    Returns:
        (H, W) float32 CPU tensor, >= 0.

    Example:
        >>> heat = xviz.attributions.saliency(m, m.preprocess(img))
    """
    from captum.attr import Saliency

    x = as_input(m, x)
    net = _net(m)
    with locked(m):
        t = resolve_target(m, x, target)
        attr = Saliency(_Counted(net, 1, progress)).attribute(_needs_grad(x), target=t, abs=True)
    return attr.detach().amax(dim=1)[0].float().cpu()


def smoothgrad(m, x, target: int | str | None = None, *, samples: int = 16, noise: float = SMOOTH_NOISE,
               batch_size: int = DEFAULT_BATCH, seed: int = 0,
               progress: ProgressFn | None = None) -> torch.Tensor:
    """SmoothGrad (Smilkov et al., 2017): gradients averaged over noisy copies, then max |.| over RGB.

    Through ``captum.attr.NoiseTunnel`` around ``Saliency``.

    Args:
        m, x, target: as in :func:`gradcam`.
        samples: noisy copies averaged.
        noise: Gaussian noise std as a share of the input's value range.
        batch_size: noisy copies per forward/backward (bounds memory).
        seed: noise seed; the same seed gives the same map.
        progress: called with (copies done, samples).

    Returns:
        (H, W) float32 CPU tensor, >= 0.

    Example:
        >>> heat = xviz.attributions.smoothgrad(m, m.preprocess(img), samples=8)
    """
    from captum.attr import NoiseTunnel, Saliency

    x = as_input(m, x)
    net = _net(m)
    std = noise * float(x.max() - x.min())
    with locked(m):
        t = resolve_target(m, x, target)
        with _seeded(seed, x.device):
            attr = NoiseTunnel(Saliency(_Counted(net, samples, progress))).attribute(
                _needs_grad(x), nt_type="smoothgrad", nt_samples=samples, nt_samples_batch_size=batch_size,
                stdevs=std, target=t, abs=False)
    return attr.detach().abs().amax(dim=1)[0].float().cpu()


IG_TOLERANCE = 0.01  # completeness error the default IG refines to (Sundararajan et al.: "within 5%"; we ask 1%)
IG_FIRST_STEPS = 9  # path points of the first pass: 8 equal intervals, ends included
IG_MAX_STEPS = 257  # refinement stops here if the tolerance is not met (~8 s per 100 points at 150 px)
IG_BASELINES = ("grey", "black", "blurred")
BLUR_SIGMA = 1 / 15  # the blurred baseline's Gaussian sigma as a share of the image side


def ig_baseline(m, x: torch.Tensor, baseline: str | float = "grey") -> torch.Tensor:
    """The reference image IG starts its path from, in model space, shaped like ``x``.

    ``"grey"``: 0 in model space (mid-grey for [-1, 1] inputs); ``"black"``: a black photo through the
    model's own preprocessing; ``"blurred"``: the image under a Gaussian blur (Sturmfels et al., 2020,
    "Visualizing the Impact of Feature Attribution Baselines"): the colours stay, the detail goes. A
    float is used as a constant value.
    """
    if isinstance(baseline, (int, float)):
        return torch.full_like(x, float(baseline))
    if baseline == "grey":
        return torch.zeros_like(x)
    if baseline == "black":
        size = x.shape[-1]
        black = Image.new("RGB", (size, size))
        pre = getattr(m, "preprocessing", None)
        value = m.preprocess(black) if pre is not None else torch.full_like(x, -1.0)
        return value.to(x.device, x.dtype).expand_as(x).clone()
    if baseline == "blurred":
        sigma = max(1.0, BLUR_SIGMA * min(x.shape[-2:]))
        radius = int(3 * sigma)
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = (k / k.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)  # (3, 1, 1, K): one row kernel per channel
        pad = F.pad(x, (radius, radius, radius, radius), mode="replicate")
        return F.conv2d(F.conv2d(pad, k, groups=3), k.transpose(-1, -2), groups=3)
    raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(IG_BASELINES)} or a number")


@dataclass(frozen=True)
class IGResult:
    """Integrated Gradients with its own check: the completeness error.

    Completeness (Sundararajan et al., 2017, prop. 1): the attributions add up to
    f(image) - f(baseline). The integral is approximated, so they add up only approximately;
    ``completeness_error`` says how well: |sum(map) - score_difference| / |score_difference|.
    With noisy copies (SmoothGrad on IG) both sides are means over the copies.
    """

    map: torch.Tensor  # (H, W) float32 CPU, signed, summed over RGB
    completeness_error: float  # relative; nan when the score does not change along the path
    attribution_sum: float  # sum of ``map``
    score_difference: float  # f(image) - f(baseline) for the target (mean over noisy copies)
    steps: int  # path points evaluated, per image (noisy copies: the mean)
    tolerance: float | None  # the bound refinement aimed for; None: fixed steps
    baseline: str  # "grey", "black", "blurred" or the constant value
    target: int
    samples: int  # noisy copies averaged (SmoothGrad on IG); 0: plain IG

    @property
    def met(self) -> bool:
        """The completeness error is within the tolerance (fixed steps: always False)."""
        return self.tolerance is not None and self.completeness_error <= self.tolerance


class _Path:
    """One straight path baseline -> image and the gradients evaluated on it so far.

    The rule is the trapezoid on the evaluated points, which include both ends. Two reasons: the end
    points are f(baseline) and f(image), so the completeness error costs no extra pass; and every
    interval's own error is known exactly, since f(b) - f(a) is the true integral of d f / d alpha
    over [a, b]. Refinement halves the intervals whose error is largest, reusing every point
    computed so far (a Gauss-Legendre rule, captum's default, has to start again for more points).
    """

    def __init__(self, start: torch.Tensor, end: torch.Tensor):
        self.start, self.delta = start, end - start  # (1, 3, H, W) each
        self.f: dict[float, float] = {}  # alpha -> class score
        self.slope: dict[float, float] = {}  # alpha -> d f / d alpha = grad . delta
        self.maps: dict[float, torch.Tensor] = {}  # alpha -> (H, W) of grad * delta summed over RGB

    def points(self, alphas) -> torch.Tensor:
        a = torch.tensor(alphas, dtype=self.start.dtype, device=self.start.device).view(-1, 1, 1, 1)
        return self.start + a * self.delta  # (n, 3, H, W)

    def record(self, alphas, scores: torch.Tensor, grads: torch.Tensor) -> None:
        per_pixel = (grads * self.delta).sum(dim=1).double().cpu()  # (n, H, W)
        for i, a in enumerate(alphas):
            self.f[a], self.maps[a] = float(scores[i]), per_pixel[i]
            self.slope[a] = float(per_pixel[i].sum())

    def intervals(self) -> list[tuple[float, float, float]]:
        """(error of the trapezoid on [a, b], a, b) for each interval between evaluated points."""
        al = sorted(self.f)
        return [((self.slope[a] + self.slope[b]) / 2 * (b - a) - (self.f[b] - self.f[a]), a, b)
                for a, b in zip(al, al[1:])]

    @property
    def gap(self) -> float:
        return self.f[1.0] - self.f[0.0]

    def attribution(self) -> torch.Tensor:
        al = sorted(self.f)
        weight = dict.fromkeys(al, 0.0)
        for a, b in zip(al, al[1:]):
            weight[a] += (b - a) / 2
            weight[b] += (b - a) / 2
        return sum(weight[a] * self.maps[a] for a in al)  # (H, W) float64


def integrated_gradients(m, x, target: int | str | None = None, *, steps: int | None = None,
                         tolerance: float = IG_TOLERANCE, max_steps: int = IG_MAX_STEPS,
                         time_budget: float | None = None, baseline: str | float = "grey",
                         batch_size: int = DEFAULT_BATCH, smooth_samples: int = 0, noise: float = SMOOTH_NOISE,
                         seed: int = 0, progress: ProgressFn | None = None) -> IGResult:
    """Integrated Gradients (Sundararajan et al., 2017) that say how well they add up.

    The path integral from the baseline to the image is taken with the trapezoid rule. By default the
    rule is refined, halving the intervals with the largest error first, until the completeness
    error is within ``tolerance`` or ``max_steps`` points (or ``time_budget`` seconds) are spent;
    ``steps=`` instead evaluates that many equally spaced points and reports the error it gets.
    With ``smooth_samples > 0`` the image is replaced by noisy copies (SmoothGrad on IG) and the map
    and the error are of their mean. Attributions are summed over RGB: the map is signed, positive
    pixels raise the class score relative to the baseline.

    Args:
        m, x, target: as in :func:`gradcam`.
        steps: fixed number of path points (>= 2, ends included); None: refine to ``tolerance``.
        tolerance: completeness error to reach when refining.
        max_steps: most path points per image when refining.
        time_budget: seconds after which refinement stops even if the tolerance is not met.
        baseline: ``"grey"``, ``"black"``, ``"blurred"`` or a constant (see :func:`ig_baseline`).
        batch_size: path points per forward/backward; peak memory grows with it.
        smooth_samples: noisy copies to average (0: plain IG).
        noise, seed: as in :func:`smoothgrad`.
        progress: called with (path points done, most points it may take).

    Returns:
        :class:`IGResult`; ``.map`` is the (H, W) float32 CPU map.

    Example:
        >>> r = xviz.attributions.integrated_gradients(m, m.preprocess(img), "cup")
        >>> r.met, f"{r.completeness_error:.1%} after {r.steps} steps"
        (True, '0.8% after 41 steps')
        >>> heat = r.map
    """
    if steps is not None and steps < 2:
        raise ValueError(f"Integrated Gradients needs at least 2 path points (both ends), got steps={steps}")
    if steps is None and not (0 < tolerance < 1 and max_steps >= IG_FIRST_STEPS):
        raise ValueError(f"refining needs 0 < tolerance < 1 and max_steps >= {IG_FIRST_STEPS}, "
                         f"got {tolerance} and {max_steps}")
    x = as_input(m, x)
    net = _net(m)
    base = ig_baseline(m, x, baseline)
    copies = max(1, smooth_samples)
    first = steps if steps is not None else IG_FIRST_STEPS
    most = (steps if steps is not None else max_steps) * copies
    clock = time.monotonic()
    with locked(m):
        t = resolve_target(m, x, target)
        if smooth_samples > 0:
            std = noise * float(x.max() - x.min())
            with _seeded(seed, x.device):
                ends = [x + torch.randn_like(x) * std for _ in range(copies)]
        else:
            ends = [x]
        paths = [_Path(base, end) for end in ends]
        todo = [(p, i / (first - 1)) for p in paths for i in range(first)]
        done = 0
        while todo:
            for i in range(0, len(todo), batch_size):
                chunk = todo[i: i + batch_size]
                points = torch.cat([p.points([a]) for p, a in chunk]).requires_grad_(True)
                scores = net(points)[:, t]
                grads, = torch.autograd.grad(scores.sum(), points)
                for j, (p, a) in enumerate(chunk):
                    p.record([a], scores[j: j + 1].detach(), grads[j: j + 1])
                done += len(chunk)
                if progress:
                    progress(done, most)
            total_error = sum(e for p in paths for e, _, _ in p.intervals())
            gap = sum(p.gap for p in paths)
            if (steps is not None or abs(total_error) <= tolerance * abs(gap) or done >= most
                    or (time_budget is not None and time.monotonic() - clock > time_budget)):
                break
            # halve the worst intervals over every path, a batch at a time (never past max_steps a path)
            worst = sorted(((abs(e), p, a, b) for p in paths for e, a, b in p.intervals()
                            if len(p.f) < max_steps), key=lambda w: -w[0])[:batch_size]
            todo = [(p, (a + b) / 2) for _, p, a, b in worst]
    heat = sum(p.attribution() for p in paths) / copies
    gap = sum(p.gap for p in paths) / copies
    total = float(heat.sum())
    error = abs(total - gap) / abs(gap) if abs(gap) > 1e-9 else float("nan")
    if progress:
        progress(most, most)
    return IGResult(heat.float(), error, total, gap, round(sum(len(p.f) for p in paths) / copies),
                    None if steps is not None else tolerance,
                    baseline if isinstance(baseline, str) else f"{float(baseline):g}", t, smooth_samples)


def occlusion_window(size: int) -> tuple[int, int]:
    """Default (window, stride) in pixels: a sixth of the side, half-overlapping (~12x12 positions)."""
    window = max(4, round(size / 6))
    return window, max(1, window // 2)


def occlusion(m, x, target: int | str | None = None, *, window: int | None = None, stride: int | None = None,
              baseline: float = 0.0, batch_size: int = OCCLUSION_BATCH,
              progress: ProgressFn | None = None) -> torch.Tensor:
    """Occlusion (Zeiler & Fergus, 2014): how much the class score drops when a square is greyed out.

    Through ``captum.attr.Occlusion``; the window covers all three channels, so the map is the
    per-pixel mean drop of the windows covering it (positive: hiding it lowers the score).

    Args:
        m, x, target: as in :func:`gradcam`.
        window, stride: square side and step in pixels; default :func:`occlusion_window`.
        baseline: value put in the occluded square (0.0 = mid-grey for [-1, 1] inputs).
        batch_size: occluded copies per forward (bounds memory).
        progress: called with (forwards done, 1 + number of window positions).

    Returns:
        (H, W) float32 CPU tensor, signed.

    Example:
        >>> heat = xviz.attributions.occlusion(m, m.preprocess(img), window=20, stride=10)
    """
    from captum.attr import Occlusion

    x = as_input(m, x)
    net = _net(m)
    h, w = x.shape[-2:]
    default_window, default_stride = occlusion_window(min(h, w))
    window = window or default_window
    stride = stride or (default_stride if window == default_window else max(1, window // 2))
    if not 1 <= stride <= window <= min(h, w):
        raise ValueError(f"occlusion needs 1 <= stride <= window <= image side, got stride {stride}, "
                         f"window {window}, side {min(h, w)}")
    positions = (math.ceil((h - window) / stride) + 1) * (math.ceil((w - window) / stride) + 1)
    with locked(m):
        t = resolve_target(m, x, target)
        attr = Occlusion(_Counted(net, 1 + positions, progress)).attribute(
            x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
            baselines=baseline, target=t, perturbations_per_eval=batch_size)
    return attr.detach().mean(dim=1)[0].float().cpu()


# -- the registry the page and notebooks use ------------------------------------------------------

def _ig_map(m, x, target=None, **options) -> torch.Tensor:
    """The map alone, for :func:`attribute`; :func:`integrated_gradients` also says how well it adds up."""
    return integrated_gradients(m, x, target, **options).map


@dataclass(frozen=True)
class Method:
    """One attribution method as the app presents it."""

    name: str  # key for attribute() and cache keys
    title: str  # what the page shows
    fn: Callable[..., torch.Tensor]
    uses_layer: bool  # takes layer= (Grad-CAM family)
    signed: bool  # the map can be negative (evidence against the class)
    slow: bool  # many passes: show progress
    summary: str  # one sentence for students


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("gradcam", "Grad-CAM", gradcam, True, False, False,
           "Weights each channel of a layer by how much the class score rises with it, then keeps the "
           "positive evidence: coarse, but about this class."),
    Method("guided_gradcam", "Guided Grad-CAM", guided_gradcam, True, False, False,
           "Grad-CAM times guided backpropagation: pixel-sharp edges inside the Grad-CAM region."),
    Method("saliency", "Saliency (gradient)", saliency, False, False, False,
           "How much each pixel would change the class score if nudged: sharp but noisy."),
    Method("smoothgrad", "SmoothGrad", smoothgrad, False, False, True,
           "Saliency averaged over noisy copies of the image: the noise cancels, the object stays."),
    Method("integrated_gradients", "Integrated Gradients", _ig_map, False, True, True,
           "Adds up gradients along a path from a grey image to yours: the pixels' shares of the score."),
    Method("occlusion", "Occlusion", occlusion, False, True, True,
           "Greys out one square at a time and measures how much the class score drops: slow, but "
           "uses no gradients at all."),
)}


def attribute(m, x, target: int | str | None = None, method: str = "gradcam", *, layer: str = DEFAULT_LAYER,
              progress: ProgressFn | None = None, **options) -> torch.Tensor:
    """Any method of :data:`METHODS` by name; ``layer`` goes to the methods that use one.

    Args:
        m, x, target: as in :func:`gradcam`.
        method: a key of :data:`METHODS`.
        layer: for Grad-CAM and Guided Grad-CAM.
        progress: called with (done, total) as the method advances.
        **options: the method's own keywords (``steps=``, ``window=``, ``batch_size=`` ...).

    Returns:
        (H, W) float32 CPU tensor; see ``METHODS[method].signed``.

    Example:
        >>> heat = xviz.attributions.attribute(m, m.preprocess(img), "cup", "occlusion", window=30)
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    spec = METHODS[method]
    if spec.uses_layer:
        options["layer"] = layer
    return spec.fn(m, x, target, progress=progress, **options)


# -- trust: deletion curve ------------------------------------------------------------------------

@dataclass(frozen=True)
class DeletionCurve:
    """Class probability as pixels are replaced by the baseline, most relevant first vs random.

    Areas are the mean probability over the removed share (trapezoid rule on [0, 1]): the faster
    the curve falls, the smaller its area.
    """

    fractions: np.ndarray  # (S,) share of pixels removed, 0 to 1
    relevant: np.ndarray  # (S,) probability of target, most relevant pixels removed first
    random: np.ndarray  # (S,) the same for random order, averaged over the random orders
    area_relevant: float
    area_random: float
    target: int

    @property
    def faithful(self) -> bool:
        """The map's order removes evidence faster than chance."""
        return self.area_relevant < self.area_random


def deletion_curve(m, x, heat: torch.Tensor, target: int | str | None = None, *, steps: int = 20,
                   patch: int | None = None, baseline: float = 0.0, random_orders: int = 3,
                   batch_size: int = DEFAULT_BATCH, seed: int = 0,
                   progress: ProgressFn | None = None) -> DeletionCurve:
    """Deletion metric (Petsiuk et al., 2018, RISE): remove the most relevant patches first.

    The image is cut into square patches ranked by their mean relevance. Removing single pixels
    would be unfair to the random reference: grey pixels sprinkled at random are noise that wrecks
    a CNN's features long before any evidence is gone, so random order would always "win".

    Args:
        m, x, target: as in :func:`gradcam`.
        heat: (H, W) map of ``x`` from any method; larger = more relevant. Ties are broken at random.
        steps: removal steps after the intact image (shares 0, 1/steps, ..., 1 of the patches).
        patch: patch side in pixels; default a sixteenth of the image side.
        baseline: value of a removed pixel in model space (0.0 = mid-grey for [-1, 1] inputs).
        random_orders: random removal orders averaged for the reference curve.
        batch_size: images per forward (bounds memory).
        seed: seed of the random orders and of tie-breaking.
        progress: called with (images evaluated, (steps + 1) * (1 + random_orders)).

    Returns:
        :class:`DeletionCurve`.

    Example:
        >>> x = m.preprocess(img)
        >>> curve = xviz.attributions.deletion_curve(m, x, xviz.gradcam(m, x))
        >>> curve.area_relevant < curve.area_random
        True
    """
    x = as_input(m, x)
    h, w = x.shape[-2:]
    heat = (heat.detach().float().cpu() if isinstance(heat, torch.Tensor)
            else torch.from_numpy(np.array(heat, dtype=np.float32)))  # a copy: cached maps are read-only
    if heat.shape != (h, w):
        raise ValueError(f"the map is {tuple(heat.shape)} but the image is {(h, w)}; pass the map of this image")
    net = _net(m)
    with locked(m):
        t = resolve_target(m, x, target)
    patch = patch or max(1, round(min(h, w) / 16))
    # (H, W) -> (gh, gw) mean relevance per patch; edge patches are partial (ceil_mode)
    relevance = F.avg_pool2d(heat[None, None], patch, patch, ceil_mode=True)[0, 0]
    gh, gw = relevance.shape
    n = gh * gw
    gen = torch.Generator().manual_seed(seed)
    # descending relevance; a random permutation first makes the stable sort break ties at random
    jitter = torch.randperm(n, generator=gen)
    order = jitter[torch.argsort(relevance.flatten()[jitter], descending=True, stable=True)]
    orders = [order] + [torch.randperm(n, generator=gen) for _ in range(random_orders)]
    counts = [round(n * k / steps) for k in range(steps + 1)]
    total = len(orders) * len(counts)
    done = 0
    probs, shares = [], []
    for order in orders:
        rank = torch.empty(n, dtype=torch.long)
        rank[order] = torch.arange(n)  # rank[p]: when patch p gets removed
        # (gh, gw) patch ranks -> (h, w) pixel ranks
        pixel_rank = rank.reshape(gh, gw).repeat_interleave(patch, 0).repeat_interleave(patch, 1)[:h, :w]
        pixel_rank = pixel_rank.to(x.device)
        curve, removed_share = [], []
        for start in range(0, len(counts), batch_size):
            chunk = counts[start:start + batch_size]
            removed = torch.stack([pixel_rank < c for c in chunk])[:, None]  # (B, 1, h, w)
            batch = torch.where(removed, torch.full_like(x, baseline), x.expand(len(chunk), -1, -1, -1))
            with locked(m), torch.no_grad():
                p = net(batch.contiguous(memory_format=torch.channels_last)).softmax(dim=1)[:, t]
            curve += p.float().cpu().tolist()
            removed_share += removed.float().mean(dim=(1, 2, 3)).cpu().tolist()
            done += len(chunk)
            if progress:
                progress(done, total)
        probs.append(np.asarray(curve))
        shares.append(np.asarray(removed_share))
    fractions = shares[0]  # pixel shares; random orders differ slightly where edge patches are partial
    relevant = probs[0]
    rand = np.mean(probs[1:], axis=0) if random_orders else np.full_like(relevant, np.nan)
    area_random = float(np.mean([np.trapezoid(c, f) for c, f in zip(probs[1:], shares[1:])])) \
        if random_orders else float("nan")
    return DeletionCurve(fractions, relevant, rand, float(np.trapezoid(relevant, fractions)), area_random, t)


# -- trust: model-randomisation sanity check ------------------------------------------------------

def cascade_stages(net: Xception) -> list[str]:
    """The randomisation cascade, head first: "head", "block14", "block13", ..., "block1"."""
    return list(net.block_paths())[::-1]


def _stage_module(net: Xception, stage: str) -> torch.nn.Module:
    path = net.block_paths().get(stage)
    if path is None:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(cascade_stages(net))}")
    return net.get_submodule(path)


def _reinitialise(module: torch.nn.Module) -> None:
    """PyTorch's default init for every conv, dense and BN (BN back to identity statistics).

    The new values are drawn on the CPU and copied over, so a seed gives the same random network
    on every device (CUDA draws from its own generator).
    """
    for sub in module.modules():
        if isinstance(sub, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d)):
            fresh = copy.deepcopy(sub).to("cpu")
            fresh.reset_parameters()
            tensors = dict(sub.named_parameters()) | dict(sub.named_buffers())
            with torch.no_grad():
                for name, value in fresh.state_dict().items():
                    tensors[name].copy_(value)


def spearman(a, b) -> float:
    """Spearman rank correlation with average ranks for ties; nan when either map is constant."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64).ravel()), _ranks(np.asarray(b, dtype=np.float64).ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def _ranks(v: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    return (starts + (counts - 1) / 2.0)[inverse]


@dataclass(frozen=True)
class RandomisationCheck:
    """Maps after cumulatively randomising the network from the head down (Adebayo et al., 2018).

    ``spearman[i]`` compares the map after randomising ``stages[: i + 1]`` with the original map
    (absolute values for signed methods, as in the paper). Near 1: the map ignores the weights
    (an edge detector); falling towards 0: the map depends on what the network learned.
    """

    method: str
    stages: list[str]  # cumulative: stages[i] is the lowest block randomised at step i
    spearman: list[float]
    original: np.ndarray  # (H, W)
    maps: list[np.ndarray]  # (H, W) per stage


def randomisation_check(m, x, target: int | str | None = None, method: str = "gradcam", *,
                        layer: str = DEFAULT_LAYER, stages: Sequence[str] | None = None, seed: int = 0,
                        progress: ProgressFn | None = None, **options) -> RandomisationCheck:
    """Model-randomisation sanity check on a copy of the network; the shared model is never touched.

    Args:
        m, x, target: as in :func:`gradcam`; the target is fixed from the trained model.
        method, layer, options: the attribution to test, as in :func:`attribute`.
        stages: where to record a map along :func:`cascade_stages` (each randomises every stage
            above it too); default: all of them.
        seed: seed of the re-initialisation.
        progress: called with (maps done, 1 + len(stages)).

    Returns:
        :class:`RandomisationCheck`.

    Example:
        >>> check = xviz.attributions.randomisation_check(m, m.preprocess(img))
        >>> check.spearman[-1] < 0.5
        True
    """
    x = as_input(m, x)
    net = _net(m)
    with locked(m):
        t = resolve_target(m, x, target)
        original = attribute(m, x, t, method, layer=layer, **options)
        twin = copy.deepcopy(net)  # under the lock: a deep copy would also copy any live captum hook
    signed = METHODS[method].signed
    cascade = cascade_stages(net)
    wanted = list(stages) if stages is not None else cascade
    unknown = [s for s in wanted if s not in cascade]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; stages are {', '.join(cascade)}")
    wanted = sorted(set(wanted), key=cascade.index)
    twin_model = dataclasses.replace(m, net=twin, lock=threading.RLock()) if hasattr(m, "net") else twin
    total = 1 + len(wanted)
    if progress:
        progress(1, total)
    maps, rhos = [], []
    with _seeded(seed, x.device):
        for stage in cascade[: cascade.index(wanted[-1]) + 1]:
            _reinitialise(_stage_module(twin, stage))
            if stage not in wanted:
                continue
            heat = attribute(twin_model, x, t, method, layer=layer, **options)
            maps.append(heat.numpy())
            a, b = (original.abs(), heat.abs()) if signed else (original, heat)
            rhos.append(spearman(a.numpy(), b.numpy()))
            if progress:
                progress(1 + len(maps), total)
    return RandomisationCheck(method, wanted, rhos, original.numpy(), maps)


# -- composites for the pointing game -------------------------------------------------------------

Box = tuple[int, int, int, int]  # (left, top, right, bottom) in pixels, right/bottom exclusive


def plain_canvas(size: int, color: tuple[int, int, int] = (236, 236, 236)) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def noise_canvas(size: int, rng: np.random.Generator) -> Image.Image:
    """Uniform RGB noise: a background with no object and no structure."""
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


def paste(canvas: Image.Image, obj: Image.Image, side: int, left: int, top: int, *,
          feather: float = 0.0) -> tuple[Image.Image, Box]:
    """``obj`` resized so its longer side is ``side`` px, pasted with its corner at (left, top).

    ``feather`` > 0 fades the pasted border into the canvas over that share of the paste's
    shorter side. A hard rectangular seam is a long straight edge, and the kitchenware model
    reads it as a knife blade often enough to matter: soften it to test localisation, keep it
    to show students what a classifier does with a collage.
    """
    scale = side / max(obj.size)
    w, h = max(1, round(obj.width * scale)), max(1, round(obj.height * scale))
    if left + w > canvas.width or top + h > canvas.height or left < 0 or top < 0:
        raise ValueError(f"a {w}x{h} paste at ({left}, {top}) does not fit a {canvas.width}x{canvas.height} canvas")
    out = canvas.convert("RGB")  # a copy, so the caller's canvas is never changed
    mask = None
    if feather > 0:
        ramp = max(1.0, feather * min(w, h))
        rows = np.minimum(np.arange(h), np.arange(h)[::-1])[:, None]  # distance to the nearest edge
        cols = np.minimum(np.arange(w), np.arange(w)[::-1])[None, :]
        alpha = np.clip((np.minimum(rows, cols) + 0.5) / ramp, 0.0, 1.0)  # (h, w) in [0, 1]
        mask = Image.fromarray((alpha * 255.0 + 0.5).astype(np.uint8), "L")
    out.paste(obj.convert("RGB").resize((w, h), Image.BILINEAR), (left, top), mask)
    return out, (left, top, left + w, top + h)


def random_paste(canvas: Image.Image, obj: Image.Image, rng: np.random.Generator,
                 min_share: float = 1 / 3, max_share: float = 1 / 2, *,
                 feather: float = 0.0) -> tuple[Image.Image, Box]:
    """Paste ``obj`` at a random place, its longer side a random share of the canvas side."""
    side = int(rng.integers(round(min_share * canvas.width), round(max_share * canvas.width) + 1))
    scale = side / max(obj.size)
    w, h = max(1, round(obj.width * scale)), max(1, round(obj.height * scale))
    left = int(rng.integers(0, canvas.width - w + 1))
    top = int(rng.integers(0, canvas.height - h + 1))
    return paste(canvas, obj, side, left, top, feather=feather)


def peak(heat: torch.Tensor | np.ndarray) -> tuple[int, int]:
    """(row, col) of the map's maximum."""
    arr = np.asarray(heat)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(arr)), arr.shape))


def peak_in_box(heat: torch.Tensor | np.ndarray, box: Box) -> bool:
    """The pointing game's hit: the map's maximum lies inside ``box``."""
    row, col = peak(heat)
    left, top, right, bottom = box
    return left <= col < right and top <= row < bottom
