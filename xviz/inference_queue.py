"""The local queue: :class:`InferenceQueue`, the :class:`~xviz.inference.Backend` of this process,
with one worker thread per model that owns its network (how it serves requests: see xviz.inference)."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import torch

from .activations import has_hooks
from .inference import (DONE, OPS, QUEUED, RUNNING, Backend, Op, Place, ProgressFn, SessionTickets, Ticket, _digest,
                        _frozen, _model_id, batch_limit)


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
                self.x.dtype, self.op.shared(self.params))

    @property
    def cost_key(self) -> tuple:
        p = self.params
        return (self.op.name, _model_id(self.model), self.size, p.get("method"), p.get("steps"),
                p.get("samples"), p.get("window"))


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
        if not job.op.heavy and job.op.batchable and job.op.cost == 1.0:  # one forward an image (not the head alone)
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

    def _next(self, line: deque[_Job]) -> list[_Job]:
        """The first live job of ``line`` (cheap or heavy) and, for a batchable op, the live jobs right
        behind it that can share its pass; jobs cancelled before their turn are dropped uncomputed."""
        while line and not line[0].tickets:
            self.queue._drop(line.popleft())
        if not line:
            return []
        batch = [line.popleft()]
        if batch[0].op.batchable:
            limit, bkey = self.queue.batch_limit(batch[0].size), batch[0].batch_key
            while line and len(batch) < limit:
                job = line[0]
                if not job.tickets:
                    self.queue._drop(line.popleft())
                elif job.batch_key == bkey:
                    batch.append(line.popleft())
                else:
                    break  # arrival order is kept: no overtaking a job of another kind
        return batch

    def _loop(self) -> None:
        q = self.queue
        while True:
            with q._lock:
                batch: list[_Job] = []
                deadline = time.monotonic() + q.idle_exit_s
                while not q._closed:
                    batch = self._next(self.cheap) or self._next(self.heavy)
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
        """Compute ``batch`` (one job, or jobs sharing a forward); no lock held."""
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
        params = first.op.batch_params([j.params for j in batch])
        try:
            with torch.no_grad():
                out = first.op.fn(first.model, torch.cat([j.x for j in batch]), None, **params)
        except Exception:  # noqa: BLE001 - one bad request must not fail its neighbours: retry one by one
            for job in batch:
                self._run([job])
            return
        q._costs_learn(first, time.perf_counter() - t0, images=len(batch))
        with q._lock:
            q.served["batches"] += 1
            q.served["largest_batch"] = max(q.served["largest_batch"], len(batch))
        for i, job in enumerate(batch):
            q._finish(job, value=out[i] if isinstance(out, list) else out[i:i + 1])

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
            if waiting and net is not None and not has_hooks(net):
                self._serve_cheap_now()
        return progress

    def _serve_cheap_now(self) -> None:
        """Serve the cheap jobs waiting now, inside a long job's pause (this thread holds the model)."""
        while True:
            with self.queue._lock:
                batch = self._next(self.cheap)
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
        self._sessions = SessionTickets()
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
            self._sessions.attach(ticket, job)
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
            self._sessions.forget(ticket)
            # the job stays in its queue until its turn: resubmitted in time, it keeps its place
        return True

    def tickets(self, session: Hashable) -> list[Ticket]:
        with self._lock:
            return self._sessions.unfinished(session)

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
                self._sessions.forget(t)
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

