"""The attribution methods: Grad-CAM and captum's methods behind one signature. See xviz.attributions;
Integrated Gradients, which also says how well it adds up, is in :mod:`xviz.attributions.ig`."""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image

from ..activations import locked
from ..errors import WeightsError
from ..model import Xception

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


def gradcam_from_features(m, features: torch.Tensor, target: int | str | None = None,
                          size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Grad-CAM at :data:`DEFAULT_LAYER` from that layer's output, already computed by a forward pass.

    ``DEFAULT_LAYER`` is what the classifier head reads, so only the head (global pooling and the
    Dense layers: microseconds) runs here, forward and backward: a prediction's forward
    (:meth:`xviz.LoadedModel.logits_and_features`) then serves the map of every class. Equal to
    :func:`gradcam` at that layer when ``features`` come from the same network (the fused copy's
    differ from the eager network's by ~1e-6 relative, and so does the map).

    Args:
        m: a :class:`xviz.LoadedModel` (its lock is held) or a bare :class:`xviz.model.Xception`.
        features: (1, 2048, h, w) float32, ``block14_sepconv2_act`` of one image.
        target: class index, label, or None for the predicted class.
        size: the input's side (or (H, W)) to upsample to; default: the model's input size.

    Returns:
        (H, W) float32 CPU tensor, as :func:`gradcam`.
    """
    if features.dim() != 4 or features.shape[0] != 1:
        raise ValueError(f"expected one image's features of shape (1, C, h, w), got {tuple(features.shape)}")
    return gradcam_from_features_batch(m, features, [target], size)[0]


def gradcam_from_features_batch(m, features: torch.Tensor, targets: list[int | str | None],
                                size: int | tuple[int, int] | None = None) -> list[torch.Tensor]:
    """:func:`gradcam_from_features` of N images in one pass of the head, each with its own target
    (the inference queue batches the Grad-CAM requests a class makes at once). The head reads each
    image alone, so image i's gradient is that of its own target's logit: the maps equal N single calls.

    Args:
        features: (N, 2048, h, w) float32.
        targets: N class indices, labels or None (the predicted class of that image).

    Returns:
        N (H, W) float32 CPU tensors, each owning its memory.
    """
    net = _net(m)
    if features.dim() != 4 or features.shape[0] != len(targets):
        raise ValueError(f"expected the features of {len(targets)} images, (N, C, h, w), got {tuple(features.shape)}")
    size = getattr(m, "input_size", None) if size is None else size
    if size is None:
        raise ValueError("pass size= (the input's side) with a bare network")
    size = (size, size) if isinstance(size, int) else tuple(size)
    ts = [_check_target(m, t) for t in targets]
    a = features.detach().float().to(next(net.parameters()).device).requires_grad_(True)
    with locked(m), torch.enable_grad():
        logits = net.forward_head(a)
        predicted = logits.argmax(dim=1).tolist() if None in ts else []
        index = torch.tensor([predicted[i] if t is None else t for i, t in enumerate(ts)], device=logits.device)
        (grad,) = torch.autograd.grad(logits.gather(1, index[:, None]).sum(), a)
    maps = F.interpolate(_cam(a.detach(), grad), size=size, mode="bilinear", align_corners=False)[:, 0]
    return [heat.float().cpu().clone() for heat in maps] if len(ts) > 1 else [maps[0].float().cpu()]


def _cam(a: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    alpha = grad.mean(dim=(2, 3), keepdim=True)  # (N, C, h, w) -> (N, C, 1, 1): each image its own weights
    return F.relu((alpha * a).sum(dim=1, keepdim=True))  # (N, C, h, w) -> (N, 1, h, w)


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
