"""Capture the outputs of named layers with forward hooks that never outlive the call."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch

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


def activations(model, x: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """{Keras layer name: (N, C, H, W) output} for one forward pass of ``x`` (on CPU, float32).

    ``model`` is a :class:`xviz.LoadedModel` (its lock serialises hooked forwards on a shared
    model) or a bare :class:`xviz.model.Xception`.
    """
    net = getattr(model, "net", model)
    lock = getattr(model, "lock", None)
    device = next(net.parameters()).device
    names = list(names)
    if lock is not None:
        lock.acquire()
    try:
        with capture(net, names) as store, torch.no_grad():
            net(x.to(device))
    finally:
        if lock is not None:
            lock.release()
    return {name: store[name].float().cpu().contiguous() for name in names}
