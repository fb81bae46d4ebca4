"""Capture the outputs of named layers with forward hooks that never outlive the call."""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from .model import Xception


@contextmanager
def capture(net: Xception, names: Iterable[str], *, detach: bool = True,
            keep: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, forwards through ``net`` fill the yielded dict {Keras name: output}.

    Outputs are cloned: a later op (or another hook) may reuse the memory. Hooks are removed in
    ``finally``, so an exception in the forward can't leave them behind on a shared model.
    ``keep``, if given, is applied to each detached output inside its hook and its result stored
    instead of a clone (e.g. a float16 copy: converting while the output is still in the CPU's
    cache costs far less than converting after the forward).

    Raises:
        KeyError: an unknown layer name.
    """
    names = list(dict.fromkeys(names))
    modules = {name: net.layer(name) for name in names}  # KeyError for unknown names, before any hook
    store: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name):
        def hook(_module, _inputs, output):
            if keep is not None:
                store[name] = keep(output.detach())
            else:
                store[name] = output.detach().clone() if detach else output
        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook_for(name)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def has_hooks(net: nn.Module) -> bool:
    """Is any hook attached to ``net`` or to every module (a capture or an attribution is using
    it, or a user's own hook is)? Then the network must run op by op, in Python, for it to fire."""
    from torch.nn.modules import module as _module
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks
            or _module._global_backward_hooks or _module._global_backward_pre_hooks):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in net.modules())


def locked(model):
    """The lock that serialises hooked forwards on a shared :class:`xviz.LoadedModel`; a bare
    network has none (its caller owns it)."""
    lock = getattr(model, "lock", None)
    return lock if lock is not None else nullcontext()


def activations(model, x: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """{Keras layer name: (N, C, H, W) output} for one forward pass of ``x`` (on CPU, float32).

    ``model`` is a :class:`xviz.LoadedModel` (its lock serialises hooked forwards on a shared
    model) or a bare :class:`xviz.model.Xception`.
    """
    net = getattr(model, "net", model)
    device = next(net.parameters()).device
    names = list(names)
    with locked(model), capture(net, names) as store, torch.no_grad():
        net(x.to(device))
    return {name: store[name].float().cpu().contiguous() for name in names}


def io_shapes(model, modules: dict[str, nn.Module], size: int) -> dict[str, tuple[tuple, tuple]]:
    """{key: (input shape, output shape)} without the batch axis, for one forward pass of a blank
    ``size`` x ``size`` image, in the order the forward visits the modules.

    Shared by the parameter ledger and the layer table: one way to ask the network for its shapes
    at any input size. Hooks are removed in ``finally``. A shared :class:`xviz.LoadedModel`'s
    Xception is not run itself: its twin (built once per network, holding the same weight tensors,
    no copy) takes the hooks and the pass under the twin's own lock, so asking for shapes neither
    waits for the model's lock (a class's captures hold it back to back: a student opening
    *Parameters* waited 2.4 s without news) nor meets another request's hooks. A bare network runs
    itself; its caller owns it.
    """
    if getattr(model, "lock", None) is None:  # a bare network
        return _hooked_shapes(getattr(model, "net", model), modules, size)
    twin, lock = _twin(model.net)
    with lock:
        return _hooked_shapes(twin, {key: twin.get_submodule(twin.paths[id(m)]) for key, m in modules.items()}, size)


_twins: "weakref.WeakKeyDictionary[Xception, tuple[Xception, threading.Lock]]" = weakref.WeakKeyDictionary()
_twins_guard = threading.Lock()


def _twin(net: Xception) -> tuple[Xception, threading.Lock]:
    """An eval-mode Xception with ``net``'s structure whose parameters and buffers ARE ``net``'s
    tensors (built on the meta device, then given them by reference), and the lock its users hold;
    ``twin.paths`` maps each of ``net``'s modules (by id) to its path. Kept while ``net`` lives. Only
    for forwards under ``no_grad`` that read the weights (what eval mode's BatchNorm does)."""
    with _twins_guard:
        found = _twins.get(net)
        if found is None:
            with torch.device("meta"):
                twin = Xception(net.config)
            twin.load_state_dict(net.state_dict(), assign=True)
            twin.eval().paths = {id(m): path for path, m in net.named_modules()}
            found = _twins[net] = (twin, threading.Lock())
    return found


def _hooked_shapes(net: nn.Module, modules: dict[str, nn.Module], size: int) -> dict[str, tuple[tuple, tuple]]:
    param = next(net.parameters())
    x = torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)
    shapes: dict[str, tuple[tuple, tuple]] = {}
    handles = []

    def hook_for(key):
        def hook(_module, inputs, output):
            shapes[key] = (tuple(inputs[0].shape[1:]), tuple(output.shape[1:]))
        return hook

    try:
        for key, module in modules.items():
            handles.append(module.register_forward_hook(hook_for(key)))
        with torch.no_grad():
            net(x)
    finally:
        for handle in handles:
            handle.remove()
    return shapes
