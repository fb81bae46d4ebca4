"""One inference queue per process: sessions submit requests, one worker per model owns the network.

A class of 30 shares one machine. Instead of 30 script threads taking turns on the model's lock
(each forward running alone, in whatever order the GIL picks), every request goes into a queue and
one worker thread per loaded model serves it:

* **Cheap requests** (``"logits"``, ``"forward"`` (logits and the features the head read),
  ``"embedding"``: one forward, no gradient; ``"gradcam_features"``: Grad-CAM at the last layer from
  those features, the head only) are served first, in arrival order, and *micro-batched*: requests
  that arrive while the network is busy and need the same model at the same input size go through it
  together, up to :func:`batch_limit` images.
* **Heavy requests** (``"capture"``, ``"attribution"``, ``"integrated_gradients"``, ``"deletion"``,
  ``"randomisation"``) run one at a time in arrival order (captures right behind each other together).
  A long one yields between its passes: at every progress report the worker serves the cheap requests
  that came in meanwhile (only when no hook is attached to the network), so one student's Integrated
  Gradients does not hold 29 predictions behind it.
* Every request returns a :class:`Ticket` at once: a future (``result()``, ``done()``), the
  request's place in line and an estimate of the wait (``place()``), and ``cancel()``.
  :meth:`Backend.cancel_session` drops every request of a session that went away. A cancelled
  request is not computed, and one that loses its last ticket while running stops at its next
  progress report.
* Identical requests (same model, op, input and parameters) share one computation: the second
  ticket waits for the first one's result instead of queueing a second forward. A ticket that is
  cancelled and submitted again before its turn keeps its place (a page rerun does exactly that).

:class:`Backend` is the interface the pages program against; :class:`InferenceQueue`
(:mod:`xviz.inference_queue`) implements it in this process. A model server on other machines
implements the same four methods (``submit``, ``place``, ``cancel``, ``cancel_session``) and hands
out the same :class:`Ticket`; requests name their work with the op names of :data:`OPS` and small
parameters, so they can be sent over a wire.

This module never imports Streamlit: use it from a notebook.

Example:
    >>> import xviz
    >>> from xviz.inference import InferenceQueue
    >>> m = xviz.load_model("kitchenware")
    >>> q = InferenceQueue()
    >>> ticket = q.submit(m, "logits", m.preprocess(img))
    >>> ticket.place()
    Place(state='queued', ahead=0, eta_s=0.05, progress=None)
    >>> ticket.result().softmax(-1)
    tensor([[0.9712, ...]])
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import hashlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable

import torch

ProgressFn = Callable[[int, int], None]

QUEUED, RUNNING, DONE = "queued", "running", "done"


# -- the interface ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Place:
    """Where a request stands.

    Attributes:
        state: ``"queued"``, ``"running"`` or ``"done"`` (finished, failed or cancelled).
        ahead: requests that will be served before this one (the one running counts).
        eta_s: estimated seconds until this request's result is ready (0 when done).
        progress: (done, total) passes of a running long method, else None.
    """

    state: str
    ahead: int = 0
    eta_s: float = 0.0
    progress: tuple[int, int] | None = None


class Ticket:
    """A submitted request: a future plus its place in line.

    Handed out by :meth:`Backend.submit`; a backend resolves :attr:`future` with the result or the
    request's exception. Waiting on a ticket never blocks the backend: cancel it from any thread.

    Attributes:
        future: a :class:`concurrent.futures.Future` of the result.
        op: the op name (a key of :data:`OPS`).
        session: the session that asked, or None.
    """

    def __init__(self, backend: "Backend", op: str, session: Hashable | None = None):
        self.backend, self.op, self.session = backend, op, session
        self.future: cf.Future = cf.Future()
        self._job: Any = None  # backend-private: what this ticket waits for

    def place(self) -> Place:
        """This request's :class:`Place` now (state, requests ahead, estimated wait)."""
        if self.future.done():
            return Place(DONE)
        return self.backend.place(self)

    def result(self, timeout: float | None = None):
        """The result, waiting up to ``timeout`` seconds.

        Raises:
            concurrent.futures.CancelledError: the ticket was cancelled.
            TimeoutError: not ready within ``timeout``.
            Exception: whatever the computation raised (only this request's).
        """
        return self.future.result(timeout)

    def done(self) -> bool:
        return self.future.done()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the result; True when it is ready (or failed/cancelled)."""
        cf.wait([self.future], timeout)
        return self.future.done()

    def cancel(self) -> bool:
        """Give up this request. The work is dropped if no other ticket shares it.

        Returns:
            True if the ticket was cancelled, False if its result was already set.
        """
        return self.backend.cancel(self)

    def __repr__(self) -> str:
        return f"Ticket({self.op!r}, {self.place()})"


class SessionTickets:
    """Which tickets each session holds, for :meth:`Backend.cancel_session`. Not locked: a backend
    calls it under its own lock."""

    def __init__(self):
        self._by_session: dict[Hashable, set[Ticket]] = {}

    def attach(self, ticket: Ticket, job) -> None:
        """``ticket`` now waits for ``job`` (anything with a ``tickets`` list)."""
        ticket._job = job
        job.tickets.append(ticket)
        if ticket.session is not None:
            self._by_session.setdefault(ticket.session, set()).add(ticket)

    def unfinished(self, session: Hashable) -> list[Ticket]:
        return [t for t in self._by_session.get(session, ()) if not t.future.done()]

    def forget(self, ticket: Ticket) -> None:
        tickets = self._by_session.get(ticket.session)
        if tickets is not None:
            tickets.discard(ticket)
            if not tickets:
                del self._by_session[ticket.session]


class Backend(abc.ABC):
    """Runs xviz's model requests; the pages and notebooks only talk to this interface.

    Implementations: :class:`InferenceQueue` (this process, one worker per model) and
    :class:`xviz.remote.RemoteBackend` (an inference service, :mod:`xviz.serving`), resolving each
    :class:`Ticket`'s future when its answer
    arrives; ``model`` then identifies the weights by ``model.key`` and ``model.input_size``.
    """

    @abc.abstractmethod
    def submit(self, model, op: str, x: torch.Tensor, *, key: Hashable | None = None,
               session: Hashable | None = None, **params) -> Ticket:
        """Queue one request and return at once.

        Args:
            model: the :class:`xviz.LoadedModel` to run.
            op: what to compute, a key of :data:`OPS` (``"logits"``, ``"forward"``, ``"embedding"``,
                ``"gradcam_features"`` (``x``: a ``"forward"``'s features), ``"capture"``,
                ``"attribution"``, ``"integrated_gradients"`` (IG's map with its completeness),
                ``"deletion"``, ``"randomisation"``).
            x: one preprocessed image, (1, 3, S, S) (``model.preprocess(img)``).
            key: identifies the request's content for sharing identical requests; default: derived
                from the model key, op, input bytes and parameters (None when a parameter is not a
                small value, e.g. an array).
            session: who asked; :meth:`cancel_session` drops all of a session's requests.
            **params: the op's own keywords (``target=``, ``method=``, ``layer=``, ...).

        Returns:
            a :class:`Ticket`.
        """

    @abc.abstractmethod
    def place(self, ticket: Ticket) -> Place:
        """The :class:`Place` of ``ticket``'s request now."""

    @abc.abstractmethod
    def cancel(self, ticket: Ticket) -> bool:
        """Cancel one ticket (see :meth:`Ticket.cancel`)."""

    def cancel_session(self, session: Hashable) -> int:
        """Cancel every unfinished ticket of ``session`` (a closed browser tab).

        Returns:
            how many tickets were cancelled.
        """
        return sum(self.cancel(t) for t in self.tickets(session))

    @abc.abstractmethod
    def tickets(self, session: Hashable) -> list[Ticket]:
        """The unfinished tickets of ``session``."""

    def close(self) -> None:
        """Stop serving; unfinished tickets are cancelled."""

    def location(self, model=None) -> str:
        """Where ``model``'s requests are computed, in words, for the status line."""
        return "in this process"

    def remote_ops(self) -> tuple[str, ...]:
        """The ops this backend sends to other machines (none here); the others run in this process."""
        return ()

    def problem(self) -> str | None:
        """Why inference does not run where it was configured to, or None (a sentence for the app)."""
        return None


# -- what a request can ask for -----------------------------------------------------------------

@dataclass(frozen=True)
class Op:
    """One kind of request.

    Attributes:
        name: the op's name in requests.
        fn: ``fn(model, x, progress, **params)``; for a batchable op ``x`` is (N, 3, S, S) and the
            result has N rows, one per image, in order (``out[i:i + 1]``), or is a list of N results.
        heavy: served after every waiting cheap request, one at a time, in arrival order (a batchable
            one together with the same requests right behind it).
        batchable: images with the same (model, input size, params) may share one call.
            Cheap batchable ops of cost 1.0 are forwards: waiting times are scaled by what they took.
        cost: prior cost in forward passes, for waiting-time estimates before one was measured.
        per_image: params that may differ between the images of one call: ``fn`` then gets a list
            of them, one per image (the class of each student's Grad-CAM).
    """

    name: str
    fn: Callable[..., Any]
    heavy: bool
    batchable: bool = False
    cost: Callable[[dict], float] | float = 1.0
    per_image: tuple[str, ...] = ()

    def shared(self, params: dict):
        """What requests must have in common to share one call: their params but the per-image ones
        (hashable; None when a parameter is not a small value)."""
        return _frozen({k: v for k, v in params.items() if k not in self.per_image})

    def batch_params(self, each: list[dict]) -> dict:
        """The params of one call for requests with these params (equal but for the per-image ones)."""
        return {**each[0], **{k: [p.get(k) for p in each] for k in self.per_image}}


def _logits(model, x, progress, **_):
    return model.logits(x)


@dataclass(frozen=True)
class Forward:
    """A batch's logits and the features the head read to give them, from one forward pass
    (:meth:`xviz.LoadedModel.logits_and_features`); ``forward[i:i + 1]`` is one image's share."""

    logits: torch.Tensor  # (N, classes) float32, CPU
    features: torch.Tensor  # (N, 2048, h, w) float32, CPU: block14_sepconv2_act

    def __getitem__(self, rows: slice) -> "Forward":
        return Forward(self.logits[rows], self.features[rows])


def _forward(model, x, progress, **_):
    return Forward(*model.logits_and_features(x))


def _gradcam_features(model, x, progress, *, target=None, **_):
    from . import attributions

    if isinstance(target, list):  # a batch (Op.per_image): one map per image
        return attributions.gradcam_from_features_batch(model, x, target)
    return attributions.gradcam_from_features(model, x, target)


def _embedding(model, x, progress, **_):
    return model.embedding(x)


def _capture(model, x, progress, **params):
    from . import flows

    captures = flows.capture_views_batch(model, x, **params)
    return captures[0] if len(captures) == 1 else captures


def _attribution(model, x, progress, *, target=None, method="gradcam", **params):
    from . import attributions

    return attributions.attribute(model, x, target, method, progress=progress, **params)


def _integrated_gradients(model, x, progress, *, target=None, **params):
    from . import attributions

    return attributions.integrated_gradients(model, x, target, progress=progress, **params)


def _deletion(model, x, progress, *, heat, target=None, **params):
    from . import attributions

    return attributions.deletion_curve(model, x, heat, target, progress=progress, **params)


def _randomisation(model, x, progress, *, target=None, method="gradcam", **params):
    from . import attributions

    return attributions.randomisation_check(model, x, target, method, progress=progress, **params)


# Forward passes per call, from bench/bench_attributions.py (ratios to one forward at 299 px);
# a first guess only: measured times replace it after one run of each kind.
_METHOD_COST = {"gradcam": 1.5, "guided_gradcam": 3.0, "saliency": 2.0, "smoothgrad": 32.0,
                "integrated_gradients": 28.0, "occlusion": 113.0}


def _attribution_cost(params: dict) -> float:
    method = params.get("method", "gradcam")
    cost = _METHOD_COST.get(method, 10.0)
    if method == "integrated_gradients":
        # refined to 1% completeness (no steps=): 40-180 path points on the example photos
        cost *= (params.get("steps") or 64) / 16 * max(1, params.get("smooth_samples", 0))
    elif method == "smoothgrad":
        cost *= params.get("samples", 16) / 16
    return cost


OPS: dict[str, Op] = {op.name: op for op in (
    Op("logits", _logits, heavy=False, batchable=True, cost=1.0),
    # logits plus the features Grad-CAM at the last layer starts from (~0.2 MB an image at 150 px)
    Op("forward", _forward, heavy=False, batchable=True, cost=1.0),
    # x is the "forward" op's features, not an image: only the head runs, forward and backward; a
    # class's requests share one pass (under a class, one took ~50 ms waiting for 4 ms of work)
    Op("gradcam_features", _gradcam_features, heavy=False, batchable=True, per_image=("target",), cost=0.02),
    Op("embedding", _embedding, heavy=False, batchable=True, cost=1.0),
    Op("capture", _capture, heavy=True, batchable=True, cost=1.2),
    Op("attribution", _attribution, heavy=True, cost=_attribution_cost),
    Op("integrated_gradients", _integrated_gradients, heavy=True,
       cost=lambda p: _attribution_cost({**p, "method": "integrated_gradients"})),
    Op("deletion", _deletion, heavy=True, cost=lambda p: 84 / 4 * 1.0),  # 84 images in batches of 4
    Op("randomisation", _randomisation, heavy=True,
       cost=lambda p: (1 + len(p.get("stages") or range(15))) * _attribution_cost(p)),
)}


def register(op: Op) -> None:
    """Add (or replace) an op of the local queue, e.g. a new kind of picture for a teaching page."""
    OPS[op.name] = op


def batch_limit(size: int) -> int:
    """How many images of ``size`` px one cheap forward may take.

    Measured on 2-core CPUs (bench/bench_queue.py): at 150 px a batch of 8 costs at most what 8
    single forwards do (the eager network: 31 ms an image against 43 ms alone, on the VM it was first
    measured on; the fused copy: about the same per image, on an AVX2 one), and a class's predictions
    share passes; at
    299 px batching costs more an image (the convolutions already fill the cores), and a batch only
    makes its first image wait for the last.
    """
    return 8 if size <= 160 else 1


# -- what identifies a request ----------------------------------------------------------------

def _model_id(model) -> str:
    return str(getattr(model, "key", id(model))).split("@")[0]  # with_input_size() appends "@size"


def _frozen(params: dict):
    """A hashable form of small parameters, or None if any is not a small value (arrays, maps)."""
    def freeze(v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (tuple, list)):
            return tuple(freeze(i) for i in v)
        if isinstance(v, dict):
            return tuple(sorted((k, freeze(i)) for k, i in v.items()))
        raise TypeError
    try:
        return freeze(params)
    except TypeError:
        return None


def _digest(x: torch.Tensor) -> str:
    t = x.detach().cpu().contiguous()
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.uint8
                          else t.numpy().tobytes()).hexdigest()[:32] + str(tuple(t.shape))


# -- the process-wide backend -------------------------------------------------------------------

_default: Backend | None = None
_default_lock = threading.Lock()


def backend() -> Backend:
    """The process-wide backend the app uses: an :class:`InferenceQueue`, or with ``$XVIZ_INFERENCE``
    set to a service's address an :class:`xviz.remote.RemoteBackend` (unless :func:`set_backend`)."""
    global _default
    with _default_lock:
        if _default is None:
            import os

            address = os.environ.get("XVIZ_INFERENCE", "").strip()
            if address:
                from .remote import RemoteBackend

                _default = RemoteBackend(address)
            else:
                _default = InferenceQueue()
        return _default


def set_backend(new: Backend) -> Backend | None:
    """Make ``new`` the process-wide backend (e.g. a remote model server); returns the previous one."""
    global _default
    with _default_lock:
        old, _default = _default, new
    return old


def run(model, op: str, x: torch.Tensor, **params):
    """Submit to :func:`backend` and wait: the queue for code that has nothing to show while waiting.

    Example:
        >>> logits = xviz.inference.run(m, "logits", m.preprocess(img))
    """
    ticket = backend().submit(model, op, x, **params)
    try:
        return ticket.result()
    except BaseException:
        ticket.cancel()
        raise


def results(tickets: Iterable[Ticket]) -> list:
    """The results of ``tickets`` in order (waiting for each)."""
    return [t.result() for t in tickets]


from .inference_queue import InferenceQueue  # noqa: E402  (the local queue builds on everything above)
