"""One inference queue per process: sessions submit requests, one worker per model owns the network.

A class of 30 shares one machine. Instead of 30 script threads taking turns on the model's lock
(each forward running alone, in whatever order the GIL picks), every request goes into a queue and
one worker thread per loaded model serves it:

* **Cheap requests** (``"logits"``, ``"embedding"``: one forward, no gradient) are served first, in
  arrival order, and *micro-batched*: requests that arrive while the network is busy and need the
  same model at the same input size go through it together, up to :func:`batch_limit` images.
* **Heavy requests** (``"capture"``, ``"attribution"``, ``"integrated_gradients"``, ``"deletion"``,
  ``"randomisation"``) run one at a time in arrival order. A long one yields between its passes: at
  every progress report the worker serves the cheap requests that came in meanwhile (only when no
  hook is attached to the network), so one student's Integrated Gradients does not hold 29 predictions behind it.
* Every request returns a :class:`Ticket` at once: a future (``result()``, ``done()``), the
  request's place in line and an estimate of the wait (``place()``), and ``cancel()``.
  :meth:`Backend.cancel_session` drops every request of a session that went away. A cancelled
  request is not computed, and one that loses its last ticket while running stops at its next
  progress report.
* Identical requests (same model, op, input and parameters) share one computation: the second
  ticket waits for the first one's result instead of queueing a second forward. A ticket that is
  cancelled and submitted again before its turn keeps its place (a page rerun does exactly that).

:class:`Backend` is the interface the pages program against; :class:`InferenceQueue` implements it
in this process. A model server on other machines implements the same four methods (``submit``,
``place``, ``cancel``, ``cancel_session``) and hands out the same :class:`Ticket`; requests name
their work with the op names of :data:`OPS` and small parameters, so they can be sent over a wire.

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
import contextlib
import hashlib
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
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
            op: what to compute, a key of :data:`OPS` (``"logits"``, ``"embedding"``, ``"capture"``,
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
            result has N rows, one per image, in order.
        heavy: served after every waiting cheap request, one at a time, in arrival order.
        batchable: images with the same (model, input size, params) may share one call.
        cost: prior cost in forward passes, for waiting-time estimates before one was measured.
    """

    name: str
    fn: Callable[..., Any]
    heavy: bool
    batchable: bool = False
    cost: Callable[[dict], float] | float = 1.0


def _logits(model, x, progress, **_):
    return model.logits(x)


def _embedding(model, x, progress, **_):
    return model.embedding(x)


def _capture(model, x, progress, **params):
    from . import flows

    return flows.capture_views(model, x, **params)


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
    Op("embedding", _embedding, heavy=False, batchable=True, cost=1.0),
    Op("capture", _capture, heavy=True, cost=1.2),
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

    Measured on a 2-core CPU (bench/bench_queue.py): at 150 px a batch of 8 costs 31 ms an image
    against 43 ms alone; at 299 px batching does not help (the convolutions already fill the cores),
    and a batch only makes its first image wait for the last.
    """
    return 8 if size <= 160 else 1


# -- the local queue ----------------------------------------------------------------------------

class _Abandoned(BaseException):
    """Raised at a progress report of a running request nobody waits for any more."""


@dataclass(eq=False)
class _Job:
    op: Op
    model: Any
    x: torch.Tensor
    params: dict
    key: Hashable | None
    seq: int
    tickets: list[Ticket] = field(default_factory=list)
    state: str = QUEUED
    started: float = 0.0
    progress: tuple[int, int] | None = None

    @property
    def size(self) -> int:
        return int(self.x.shape[-1])

    @property
    def batch_key(self) -> tuple:
        # precision: a fast-mode (bf16/fp16) view shares the network with the fp32 model, not its answers
        return (self.op.name, id(self.model.net), getattr(self.model, "precision", "fp32"), tuple(self.x.shape[1:]),
                self.x.dtype, _frozen(self.params))

    @property
    def cost_key(self) -> tuple:
        p = self.params
        return (self.op.name, _model_id(self.model), self.size, p.get("method"), p.get("steps"),
                p.get("samples"), p.get("window"))


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


def _has_hooks(net: torch.nn.Module) -> bool:
    """Is any hook attached to the network (a capture or an attribution is using it)?"""
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in net.modules())


class _Costs:
    """Seconds per request, learnt from the requests served (exponential moving average)."""

    def __init__(self, alpha: float = 0.3):
        self.alpha = alpha
        self.seconds: dict[tuple, float] = {}
        self.forward: dict[tuple, float] = {}  # (model, size) -> seconds of one cheap image

    def learn(self, job: _Job, seconds: float, images: int = 1) -> None:
        per = seconds / images
        old = self.seconds.get(job.cost_key)
        self.seconds[job.cost_key] = per if old is None else old + self.alpha * (per - old)
        if not job.op.heavy:
            fk = (_model_id(job.model), job.size)
            old = self.forward.get(fk)
            self.forward[fk] = per if old is None else old + self.alpha * (per - old)

    def forward_seconds(self, job: _Job) -> float:
        model, size = _model_id(job.model), job.size
        if (model, size) in self.forward:
            return self.forward[(model, size)]
        for (m, s), sec in self.forward.items():  # another size of the same model: scale by pixels
            if m == model:
                return sec * (size / s) ** 2
        return 0.045 * (size / 150) ** 2  # one forward at 150 px on 2 CPU cores

    def estimate(self, job: _Job) -> float:
        if job.cost_key in self.seconds:
            return self.seconds[job.cost_key]
        cost = job.op.cost(job.params) if callable(job.op.cost) else job.op.cost
        return cost * self.forward_seconds(job)


class _Worker:
    """The thread that owns one model's network: serves its jobs, cheap ones first."""

    def __init__(self, queue: "InferenceQueue", lock_id: int):
        self.queue, self.lock_id = queue, lock_id
        self.cheap: deque[_Job] = deque()
        self.heavy: deque[_Job] = deque()
        self.running: list[_Job] = []  # the heavy job and, while it yields, a cheap batch
        self.wake = threading.Condition(queue._lock)
        self.thread = threading.Thread(target=self._loop, name=f"xviz-inference-{lock_id:x}", daemon=True)
        self.thread.start()

    # all methods below that touch the deques run with queue._lock held, unless said otherwise

    def _next_cheap(self) -> list[_Job]:
        """The first live cheap job and the live jobs right behind it that can share its forward."""
        while self.cheap and not self.cheap[0].tickets:
            self.queue._drop(self.cheap.popleft())  # cancelled before its turn: not computed
        if not self.cheap:
            return []
        first = self.cheap.popleft()
        batch = [first]
        if first.op.batchable:
            limit, bkey = self.queue.batch_limit(first.size), first.batch_key
            while self.cheap and len(batch) < limit:
                job = self.cheap[0]
                if not job.tickets:
                    self.queue._drop(self.cheap.popleft())
                elif job.batch_key == bkey:
                    batch.append(self.cheap.popleft())
                else:
                    break  # arrival order is kept: no overtaking a job of another kind
        return batch

    def _next_heavy(self) -> _Job | None:
        while self.heavy:
            job = self.heavy.popleft()
            if job.tickets:
                return job
            self.queue._drop(job)
        return None

    def _loop(self) -> None:
        q = self.queue
        while True:
            with q._lock:
                batch: list[_Job] = []
                deadline = time.monotonic() + q.idle_exit_s
                while not q._closed:
                    batch = self._next_cheap()
                    if not batch:
                        job = self._next_heavy()
                        batch = [job] if job else []
                    if batch:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.wake.wait(left)
                if not batch:  # idle for a while (or closed): let go of the thread
                    q._workers.pop(self.lock_id, None)
                    return
                for job in batch:
                    job.state, job.started = RUNNING, time.monotonic()
                self.running = batch + [j for j in self.running if j not in batch]
            try:
                self._run(batch)
            finally:
                with q._lock:
                    self.running = [j for j in self.running if j not in batch]

    def _run(self, batch: list[_Job]) -> None:
        """Compute ``batch`` (one heavy job, or cheap jobs sharing a forward); no lock held."""
        first, q = batch[0], self.queue
        t0 = time.perf_counter()
        if len(batch) == 1:
            job = first
            progress = self._progress_fn(job) if job.op.heavy else None
            try:
                # cheap ops never need autograd; heavy ones (attributions) manage it themselves
                with torch.no_grad() if not job.op.heavy else contextlib.nullcontext():
                    value = job.op.fn(job.model, job.x, progress, **job.params)
            except _Abandoned:
                q._finish(job, exc=cf.CancelledError("nobody is waiting for this request any more"))
                return
            except BaseException as exc:  # noqa: BLE001 - the request's own failure, handed to its tickets
                q._finish(job, exc=exc)
                return
            q._costs_learn(job, time.perf_counter() - t0)
            q._finish(job, value=value)
            return
        try:
            with torch.no_grad():
                out = first.op.fn(first.model, torch.cat([j.x for j in batch]), None, **first.params)
        except Exception:  # noqa: BLE001 - one bad request must not fail its neighbours: retry one by one
            for job in batch:
                self._run([job])
            return
        q._costs_learn(first, time.perf_counter() - t0, images=len(batch))
        with q._lock:
            q.served["batches"] += 1
            q.served["largest_batch"] = max(q.served["largest_batch"], len(batch))
        for i, job in enumerate(batch):
            q._finish(job, value=out[i:i + 1])

    def _progress_fn(self, job: _Job) -> ProgressFn:
        """Progress of a long job: record it, stop if abandoned, and serve waiting cheap requests."""
        q = self.queue
        net = getattr(job.model, "net", None)

        def progress(done: int, total: int) -> None:
            with q._lock:
                job.progress = (int(done), int(total))
                if not job.tickets:
                    raise _Abandoned
                waiting = bool(self.cheap)
            if waiting and net is not None and not _has_hooks(net):
                self._serve_cheap_now()
        return progress

    def _serve_cheap_now(self) -> None:
        """Serve the cheap jobs waiting now, inside a long job's pause (this thread holds the model)."""
        while True:
            with self.queue._lock:
                batch = self._next_cheap()
                if not batch:
                    return
                for j in batch:
                    j.state, j.started = RUNNING, time.monotonic()
                self.running = self.running + batch
            try:
                self._run(batch)
            finally:
                with self.queue._lock:
                    self.running = [j for j in self.running if j not in batch]


class InferenceQueue(Backend):
    """The local :class:`Backend`: a queue per model, served by one worker thread per model.

    Workers start on a model's first request and exit after ``idle_exit_s`` without work (so a
    model evicted from a cache is not kept alive by its worker). Thread-safe; any thread may
    submit, wait, ask for places and cancel.

    Args:
        batch_limit: images per cheap forward as a function of the input size (default
            :func:`batch_limit`).
        idle_exit_s: seconds a worker waits for work before its thread exits.

    Example:
        >>> q = InferenceQueue()
        >>> t = q.submit(m, "attribution", m.preprocess(img), target=0, method="integrated_gradients",
        ...              session="tab-1")
        >>> t.place().ahead, t.place().eta_s
        (3, 4.2)
        >>> q.cancel_session("tab-1")   # the tab was closed: not computed
        1
    """

    def __init__(self, batch_limit: Callable[[int], int] = batch_limit, idle_exit_s: float = 60.0):
        self.batch_limit, self.idle_exit_s = batch_limit, idle_exit_s
        self._lock = threading.RLock()
        self._workers: dict[int, _Worker] = {}
        self._by_key: dict[Hashable, _Job] = {}
        self._sessions: dict[Hashable, set[Ticket]] = {}
        self._costs = _Costs()
        self._seq = itertools.count()
        self._closed = False
        # counters, for benches and tests: jobs finished, forwards shared by several images and the
        # largest such batch, requests that joined an identical one, requests dropped unserved
        self.served = {"jobs": 0, "batches": 0, "largest_batch": 0, "shared": 0, "dropped": 0}

    # -- Backend ---------------------------------------------------------------------------------

    def submit(self, model, op: str, x: torch.Tensor, *, key: Hashable | None = None,
               session: Hashable | None = None, **params) -> Ticket:
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; choose one of {', '.join(OPS)}")
        if x.dim() != 4 or x.shape[0] != 1:
            raise ValueError(f"submit one preprocessed image of shape (1, 3, S, S), got {tuple(x.shape)}")
        spec = OPS[op]
        if key is None:
            frozen = _frozen(params)
            key = None if frozen is None else (op, str(getattr(model, "key", id(model))), _digest(x), frozen)
        ticket = Ticket(self, op, session)
        with self._lock:
            if self._closed:
                raise RuntimeError("this inference queue is closed")
            job = self._by_key.get(key) if key is not None else None
            if job is None or job.state == DONE:
                job = _Job(spec, model, x, params, key, next(self._seq))
                if key is not None:
                    self._by_key[key] = job
                worker = self._worker(model)
                (worker.heavy if spec.heavy else worker.cheap).append(job)
                worker.wake.notify()
            else:
                self.served["shared"] += 1
            ticket._job = job
            job.tickets.append(ticket)
            if session is not None:
                self._sessions.setdefault(session, set()).add(ticket)
        return ticket

    def place(self, ticket: Ticket) -> Place:
        with self._lock:
            job: _Job = ticket._job
            if ticket.future.done() or job is None or job.state == DONE:
                return Place(DONE)
            worker = self._workers.get(id(job.model.lock))
            now = time.monotonic()
            if job.state == RUNNING:
                return Place(RUNNING, 0, self._remaining(job, now), job.progress)
            if worker is None:
                return Place(QUEUED, 0, self._costs.estimate(job))
            ahead = [j for j in worker.cheap if j.tickets]
            if job.op.heavy:
                heavy = [j for j in worker.heavy if j.tickets]
                ahead += heavy[:heavy.index(job)] if job in heavy else heavy
            else:
                ahead = ahead[:ahead.index(job)] if job in ahead else ahead
            running = [j for j in worker.running if j is not job]
            eta = sum(self._costs.estimate(j) for j in ahead) + self._costs.estimate(job)
            for r in running:
                left = self._remaining(r, now)
                if not job.op.heavy and r.op.heavy and r.progress:
                    left = min(left, self._step(r, now))  # a long job pauses for cheap requests at its next report
                eta += left
            return Place(QUEUED, len(ahead) + len(running), eta)

    def cancel(self, ticket: Ticket) -> bool:
        with self._lock:
            job: _Job = ticket._job
            if not ticket.future.cancel():
                return False
            if job is not None and ticket in job.tickets:
                job.tickets.remove(ticket)
            self._forget(ticket)
            # the job stays in its queue until its turn: resubmitted in time, it keeps its place
        return True

    def tickets(self, session: Hashable) -> list[Ticket]:
        with self._lock:
            return [t for t in self._sessions.get(session, ()) if not t.future.done()]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._workers.values())
            jobs = [j for w in workers for j in (*w.cheap, *w.heavy)]
            for w in workers:
                w.wake.notify_all()
        for job in jobs:
            for t in list(job.tickets):
                t.cancel()
        for w in workers:
            if w.thread is not threading.current_thread():
                w.thread.join(timeout=10)

    # -- queries ---------------------------------------------------------------------------------

    def pending(self, model=None) -> int:
        """Requests waiting (not yet running) for ``model`` (any model if None): lets a background
        task (a warm-up, a compilation) step aside while students wait."""
        with self._lock:
            workers = ([self._workers.get(id(model.lock))] if model is not None else list(self._workers.values()))
            return sum(1 for w in workers if w for j in (*w.cheap, *w.heavy) if j.tickets)

    def estimate(self, model, op: str, size: int | None = None, **params) -> float:
        """Estimated seconds one ``op`` request takes on ``model`` (learnt from the ones served)."""
        size = size or model.input_size
        job = _Job(OPS[op], model, torch.empty(1, 3, size, size), params, None, -1)
        with self._lock:
            return self._costs.estimate(job)

    # -- inside ------------------------------------------------------------------------------------

    def _worker(self, model) -> _Worker:
        # one worker per network: LoadedModel.with_input_size() copies share the net and its lock
        lock_id = id(model.lock)
        worker = self._workers.get(lock_id)
        if worker is None:
            worker = self._workers[lock_id] = _Worker(self, lock_id)
        return worker

    def _remaining(self, job: _Job, now: float) -> float:
        elapsed = now - job.started
        if job.progress and job.progress[0] > 0:
            done, total = job.progress
            return max(0.0, elapsed / done * (total - done))
        return max(0.0, self._costs.estimate(job) - elapsed)

    def _step(self, job: _Job, now: float) -> float:
        """Seconds per progress step of a running long job."""
        return (now - job.started) / max(job.progress[0], 1)

    def _costs_learn(self, job: _Job, seconds: float, images: int = 1) -> None:
        with self._lock:
            self._costs.learn(job, seconds, images)

    def _finish(self, job: _Job, value: Any = None, exc: BaseException | None = None) -> None:
        with self._lock:
            job.state = DONE
            if job.key is not None and self._by_key.get(job.key) is job:
                del self._by_key[job.key]
            tickets, job.tickets = job.tickets, []
            self.served["jobs"] += 1
            for t in tickets:
                self._forget(t)
        for t in tickets:
            if t.future.cancelled():
                continue
            try:
                if exc is not None:
                    t.future.set_exception(exc)
                else:
                    t.future.set_result(value)
            except cf.InvalidStateError:  # cancelled in between: nothing to hand over
                pass

    def _drop(self, job: _Job) -> None:
        """A queued job whose tickets were all cancelled reached its turn: forget it uncomputed."""
        job.state = DONE
        if job.key is not None and self._by_key.get(job.key) is job:
            del self._by_key[job.key]
        self.served["dropped"] += 1

    def _forget(self, ticket: Ticket) -> None:
        if ticket.session is not None:
            tickets = self._sessions.get(ticket.session)
            if tickets is not None:
                tickets.discard(ticket)
                if not tickets:
                    del self._sessions[ticket.session]


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
