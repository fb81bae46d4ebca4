"""Inference on another machine: the wire format and the client :class:`RemoteBackend`.

A class of 300 outgrows one process. The app's replicas then send the network's work to an inference
service (:mod:`xviz.serving`, on Ray Serve: replicas across nodes and GPUs, request batching) and keep
only what must stay with them: the feature-map capture (tens of MB of maps per image, read by the
hooked network) and whatever the service does not hold (uploaded or taught weights).

:class:`RemoteBackend` is an :class:`xviz.inference.Backend`: the pages submit to it exactly as to the
local queue. Predictions (``"logits"``), embeddings and attribution maps (``"attribution"``: Grad-CAM
and the other methods of :data:`xviz.attributions.METHODS`) of a model the service holds go over the
wire; everything else goes to the local :class:`~xviz.inference.InferenceQueue`. When the service is
unreachable, answers with an error, or is slower than ``timeout_s``, the request is computed locally
instead (nothing is lost) and the backend says so (:meth:`RemoteBackend.problem`) until a health check
finds the service again, every ``retry_s`` seconds.

The wire: ``POST /v1/run`` with a safetensors body (the preprocessed image as tensor ``x``; the op,
the model's key, the precision and the op's small parameters as JSON in its metadata) answered by a
safetensors body (tensor ``out``); ``GET /v1/health`` lists the models served. Nothing is pickled
in either direction.

This module never imports Streamlit, Ray or an HTTP library beyond the standard one.

Example:
    >>> from xviz.remote import RemoteBackend
    >>> b = RemoteBackend("http://inference.example.org:8000")
    >>> b.submit(m, "logits", m.preprocess(img)).result().softmax(-1)
    tensor([[0.9712, ...]])
    >>> b.location(m)
    'Ray Serve at http://inference.example.org:8000 (predictions, embeddings, Grad-CAM) · feature maps here'
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Hashable

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import inference as I

ENV = "XVIZ_INFERENCE"  # the service's address: http://host:port (or host:port)
TIMEOUT_ENV = "XVIZ_INFERENCE_TIMEOUT"  # seconds a prediction may take there before it runs here
REMOTE_OPS = ("logits", "embedding", "attribution")  # what the service computes; the rest stays local
MAX_BODY = 64 * 2**20  # a 1024 px image is 12.6 MB of float32
MIN_SIZE, MAX_SIZE = 71, 1024  # input sizes the service accepts (Xception needs >= 71)


# -- the wire -----------------------------------------------------------------------------------

class WireError(ValueError):
    """A request or reply that does not follow the wire format (the sender's bug or a hostile one)."""


@dataclass
class Request:
    """One request as the service sees it.

    Attributes:
        op: a key of :data:`REMOTE_OPS`.
        model: the base key of the weights (``LoadedModel.key`` without ``@size``/``+precision``).
        precision: "fp32", or fast mode's "bf16"/"fp16" (predictions only).
        params: the op's keywords (small JSON values).
        x: (1, 3, S, S) float32 preprocessed image.
    """

    op: str
    model: str
    precision: str
    params: dict
    x: torch.Tensor


def base_key(key: str) -> str:
    """The weights' key without the input size and precision suffixes that LoadedModel adds."""
    return re.split(r"[@+]", str(key))[0]


def encode_request(model, op: str, x: torch.Tensor, params: dict) -> bytes:
    meta = {"op": op, "model": base_key(model.key), "precision": getattr(model, "precision", "fp32"),
            "params": params}
    return st_save({"x": x.detach().float().cpu().contiguous()}, metadata={"xviz": json.dumps(meta)})


def decode_request(body: bytes) -> Request:
    """Parse and check a request body; raises :class:`WireError` naming what is wrong."""
    if len(body) > MAX_BODY:
        raise WireError(f"request of {len(body):,} bytes is over the {MAX_BODY:,}-byte limit")
    try:
        meta = json.loads(_metadata(body)["xviz"])
        tensors = st_load(body)
    except WireError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything unparsable is the sender's error
        raise WireError(f"not a safetensors request with xviz metadata ({type(exc).__name__}: {exc})") from None
    x = tensors.get("x")
    if set(tensors) != {"x"} or x is None:
        raise WireError(f"a request carries exactly one tensor 'x', got {sorted(tensors)}")
    if x.dtype != torch.float32 or x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3 or x.shape[2] != x.shape[3] \
            or not MIN_SIZE <= x.shape[-1] <= MAX_SIZE:
        raise WireError(f"x must be float32 (1, 3, S, S) with {MIN_SIZE} <= S <= {MAX_SIZE}, "
                        f"got {x.dtype} {tuple(x.shape)}")
    op, model, precision, params = (meta.get(k) for k in ("op", "model", "precision", "params"))
    if op not in REMOTE_OPS:
        raise WireError(f"op {op!r} is not served here; ops: {', '.join(REMOTE_OPS)}")
    if not isinstance(model, str) or not isinstance(precision, str) or not isinstance(params, dict):
        raise WireError("metadata needs 'model' and 'precision' strings and a 'params' object")
    if I._frozen(params) is None:
        raise WireError("params must be small JSON values")
    return Request(op, model, precision, params, x)


def _metadata(body: bytes) -> dict:
    """The ``__metadata__`` of a safetensors header (8-byte little-endian length, then JSON)."""
    n = int.from_bytes(body[:8], "little")
    if n > len(body) - 8 or n > 2**20:
        raise WireError("safetensors header length is out of range")
    meta = json.loads(body[8:8 + n]).get("__metadata__") or {}
    if "xviz" not in meta:
        raise WireError("the safetensors metadata has no 'xviz' entry")
    return meta


def encode_reply(out: torch.Tensor, info: dict) -> bytes:
    return st_save({"out": out.detach().float().cpu().contiguous()}, metadata={"xviz": json.dumps(info)})


def decode_reply(body: bytes) -> tuple[torch.Tensor, dict]:
    tensors = st_load(body)
    if set(tensors) != {"out"}:
        raise WireError(f"a reply carries exactly one tensor 'out', got {sorted(tensors)}")
    return tensors["out"], json.loads(_metadata(body)["xviz"])


# -- the client ---------------------------------------------------------------------------------

class Unavailable(Exception):
    """The service could not be reached, failed, or was too slow: the request runs locally."""


class Declined(Exception):
    """The service is up but does not serve this request (weights it does not hold, a precision it
    lacks, a request it could not compute): the request runs locally, the service stays in use."""


@dataclass(eq=False)
class _Call:
    """One request on the wire; identical requests share it (like the local queue's jobs)."""

    model: Any
    op: str
    x: torch.Tensor
    params: dict
    key: Hashable | None
    tickets: list = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


def normalise_address(address: str) -> str:
    address = address.strip().rstrip("/")
    if not re.match(r"^https?://", address):
        address = "http://" + address
    return address


class RemoteBackend(I.Backend):
    """An :class:`~xviz.inference.Backend` that sends predictions, embeddings and attribution maps to
    an xviz inference service and computes everything else, or anything the service can't, locally.

    Args:
        address: the service, ``http://host:port`` (``host:port`` works too).
        local: the backend for what stays here (default: a new :class:`~xviz.inference.InferenceQueue`).
        timeout_s: seconds a prediction or embedding may take over the wire before it is computed
            here instead (default ``$XVIZ_INFERENCE_TIMEOUT`` or 10); attribution maps get
            ``heavy_timeout_s``.
        heavy_timeout_s: the same for attribution maps (default 6 × ``timeout_s``).
        retry_s: after a failure, how long requests stay local before the service is checked again.
        workers: requests on the wire at once (each waits in its own thread).

    Example:
        >>> b = RemoteBackend("127.0.0.1:8000", timeout_s=5)
        >>> t = b.submit(m, "attribution", m.preprocess(img), target=0, method="gradcam")
        >>> t.result().shape
        torch.Size([150, 150])
    """

    def __init__(self, address: str, *, local: I.Backend | None = None, timeout_s: float | None = None,
                 heavy_timeout_s: float | None = None, retry_s: float = 30.0, workers: int = 16):
        import os

        self.address = normalise_address(address)
        self.local = local if local is not None else I.InferenceQueue()
        self.timeout_s = float(timeout_s if timeout_s is not None else os.environ.get(TIMEOUT_ENV, 10))
        self.heavy_timeout_s = heavy_timeout_s if heavy_timeout_s is not None else 6 * self.timeout_s
        self.retry_s = retry_s
        self._pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="xviz-remote")
        self._lock = threading.RLock()
        self._calls: dict[Hashable, _Call] = {}
        self._sessions = I.SessionTickets()
        self._health: dict | None = None  # the service's last /v1/health answer
        self._problem: str | None = None  # why requests run here now, for the status line
        self._retry_at = 0.0
        self._probing: threading.Event | None = None
        self._seconds: dict[str, float] = {}  # op -> moving average of a round trip
        # counters for tests and benches: answered there, computed here instead, failures seen
        self.served = {"remote": 0, "local": 0, "fallbacks": 0, "shared": 0}
        self._probe()

    # -- Backend -----------------------------------------------------------------------------

    def remote_ops(self) -> tuple[str, ...]:
        return REMOTE_OPS

    def submit(self, model, op: str, x: torch.Tensor, *, key: Hashable | None = None,
               session: Hashable | None = None, **params) -> I.Ticket:
        if not self._serves(model, op, params):
            with self._lock:
                self.served["local"] += 1
            return self.local.submit(model, op, x, key=key, session=session, **params)
        if x.dim() != 4 or x.shape[0] != 1:
            raise ValueError(f"submit one preprocessed image of shape (1, 3, S, S), got {tuple(x.shape)}")
        if key is None:
            key = (op, str(model.key), I._digest(x), I._frozen(params))
        ticket = I.Ticket(self, op, session)
        with self._lock:
            call = self._calls.get(key)
            if call is None:
                call = self._calls[key] = _Call(model, op, x, params, key)
                self._pool.submit(self._send, call)
            else:
                self.served["shared"] += 1
            self._sessions.attach(ticket, call)
        return ticket

    def place(self, ticket: I.Ticket) -> I.Place:
        job = ticket._job
        if isinstance(job, I.Ticket):  # fell back: its place in the local queue
            return job.place()
        if ticket.future.done() or job is None:
            return I.Place(I.DONE)
        with self._lock:
            left = self._seconds.get(job.op, 0.5) - (time.monotonic() - job.started)
        # the service's own queue is not visible from here: the request counts as being served
        return I.Place(I.RUNNING, 0, max(0.0, left))

    def cancel(self, ticket: I.Ticket) -> bool:
        with self._lock:
            if not ticket.future.cancel():
                return False
            job = ticket._job
            if isinstance(job, I.Ticket):
                job.cancel()
            elif job is not None and ticket in job.tickets:
                job.tickets.remove(ticket)  # the answer, if it comes, is dropped
            self._sessions.forget(ticket)
        return True

    def tickets(self, session: Hashable) -> list[I.Ticket]:
        with self._lock:
            mine = self._sessions.unfinished(session)
        return mine + self.local.tickets(session)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.local.close()

    # -- where inference runs ----------------------------------------------------------------

    def location(self, model=None) -> str:
        probing = self._probing
        if probing is not None and self._health is None:
            probing.wait(min(self.timeout_s, 3.0))  # a replica's first page: the first health check
        with self._lock:
            health, problem = self._health, self._problem
        if problem is not None:
            return "in this process (the inference service is not in use, see below)"
        if health is None:
            return f"in this process while the inference service at {self.address} is checked"
        if model is not None and not self._holds(model):
            served = ", ".join(m["kind"] for m in health.get("models", [])) or "no models"
            return f"in this process for these weights (the service at {self.address} serves {served})"
        engine = health.get("engine", "an xviz inference service")
        return (f"{engine} at {self.address} (predictions, embeddings, Grad-CAM) · "
                f"feature maps in this process")

    def problem(self) -> str | None:
        """Why requests run in this process although a service is configured, or None."""
        self._serves(None, None, {})  # a due health check starts here
        with self._lock:
            return self._problem

    def check(self, timeout_s: float | None = None) -> bool:
        """Ask the service's health now (blocking); True if it answers."""
        self._probe(wait=True, timeout_s=timeout_s)
        with self._lock:
            return self._problem is None

    # -- inside ------------------------------------------------------------------------------

    def _holds(self, model) -> bool:
        keys = {m["key"] for m in (self._health or {}).get("models", [])}
        return base_key(model.key) in keys

    def _serves(self, model, op, params) -> bool:
        with self._lock:
            if self._problem is not None and time.monotonic() >= self._retry_at and self._probing is None:
                self._retry_at = time.monotonic() + self.retry_s
                self._probe()
            probing = self._probing
        if model is None:
            return False
        if op not in REMOTE_OPS or I._frozen(params) is None:
            return False
        if probing is not None and self._health is None:
            probing.wait(min(self.timeout_s, 3.0))  # the first health check, at start-up
        with self._lock:
            return self._problem is None and self._health is not None and self._holds(model)

    def _probe(self, wait: bool = False, timeout_s: float | None = None) -> None:
        with self._lock:
            if self._probing is None:
                self._probing = threading.Event()
                threading.Thread(target=self._probe_now, args=(self._probing, timeout_s), daemon=True,
                                 name="xviz-remote-health").start()
            event = self._probing
        if wait:
            event.wait()

    def _probe_now(self, done: threading.Event, timeout_s: float | None) -> None:
        try:
            with urllib.request.urlopen(self.address + "/v1/health", timeout=timeout_s or min(self.timeout_s, 3.0)) as r:
                health = json.loads(r.read(2**20))
            with self._lock:
                self._health, self._problem = health, None
        except Exception as exc:  # noqa: BLE001 - any failure means: not usable now
            self._failed(self._reason(exc))
        finally:
            with self._lock:
                self._probing = None
            done.set()

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError) or "timed out" in str(exc):
            return f"did not answer within {self.timeout_s:g} s"
        if isinstance(exc, urllib.error.HTTPError):
            return f"answered with HTTP {exc.code}"
        if isinstance(exc, urllib.error.URLError):
            return f"could not be reached ({exc.reason})"
        return f"failed ({type(exc).__name__}: {exc})"

    def _failed(self, reason: str) -> None:
        with self._lock:
            self._problem = (f"The inference service at {self.address} {reason}; this app computes here "
                             f"instead and tries the service again every {self.retry_s:g} s.")
            self._retry_at = time.monotonic() + self.retry_s

    def _post(self, call: _Call) -> torch.Tensor:
        body = encode_request(call.model, call.op, call.x, call.params)
        timeout = self.heavy_timeout_s if I.OPS[call.op].heavy else self.timeout_s
        req = urllib.request.Request(self.address + "/v1/run", data=body, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                out, _ = decode_reply(r.read(MAX_BODY + 1))
                return out
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500:  # the service is fine; it does not serve this one
                raise Declined(exc.read(4096).decode("utf-8", "replace")) from None
            raise Unavailable(self._reason(exc)) from None
        except Exception as exc:  # noqa: BLE001 - refused, reset, timed out, garbled: not usable now
            if isinstance(exc, TimeoutError) or "timed out" in str(exc):
                raise Unavailable(f"did not answer within {timeout:g} s") from None
            raise Unavailable(self._reason(exc)) from None

    def _send(self, call: _Call) -> None:
        """One request on the wire (a pool thread); on any failure, the same request in the local queue."""
        with self._lock:
            if not call.tickets:  # cancelled before it was sent
                self._calls.pop(call.key, None)
                return
        t0 = time.monotonic()
        try:
            out = self._post(call)
        except (Unavailable, Declined) as exc:
            if isinstance(exc, Unavailable):
                self._failed(str(exc))
            self._fall_back(call)
            return
        with self._lock:
            old = self._seconds.get(call.op)
            took = time.monotonic() - t0
            self._seconds[call.op] = took if old is None else old + 0.3 * (took - old)
            self.served["remote"] += 1
            if self._calls.get(call.key) is call:
                del self._calls[call.key]
            tickets, call.tickets = call.tickets, []
            for t in tickets:
                self._sessions.forget(t)
        for t in tickets:
            try:
                t.future.set_result(out)
            except cf.InvalidStateError:  # cancelled meanwhile
                pass

    def _fall_back(self, call: _Call) -> None:
        """Hand each waiting ticket to a local ticket for the same request (the local queue shares
        identical requests by ``key``, so they still cost one computation)."""
        with self._lock:
            self.served["fallbacks"] += 1
            if self._calls.get(call.key) is call:
                del self._calls[call.key]
            tickets, call.tickets = call.tickets, []
            pairs = []
            for t in tickets:
                local = self.local.submit(call.model, call.op, call.x, key=call.key, session=t.session,
                                          **call.params)
                t._job = local  # its place and its cancellation are the local ticket's from now on
                self._sessions.forget(t)
                pairs.append((t, local))
        for t, local in pairs:
            local.future.add_done_callback(lambda f, t=t: _copy_outcome(f, t.future))



def _copy_outcome(src: cf.Future, dst: cf.Future) -> None:
    if dst.done():
        return
    try:
        if src.cancelled():
            dst.cancel()
        elif src.exception() is not None:
            dst.set_exception(src.exception())
        else:
            dst.set_result(src.result())
    except cf.InvalidStateError:  # cancelled in between
        pass
