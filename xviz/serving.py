"""The inference service: predictions, embeddings and attribution maps over HTTP, on Ray Serve.

Three layers, each usable alone:

* :class:`InferenceService` holds models loaded by the same sources as :func:`xviz.load_model`
  (``"kitchenware"``, ``"imagenet"``, ``"untrained"``, ``"auto"`` or a weights file on the server)
  and computes a list of :class:`xviz.remote.Request`\\ s: predictions and embeddings of the same
  model, size and precision share one forward (a micro-batch), attribution maps run one at a time.
  It runs the very functions of the local queue (:data:`xviz.inference.OPS`), so an answer over the
  wire equals the one computed in the app.
* :func:`asgi_app` is the HTTP face (Starlette): ``POST /v1/run`` and ``GET /v1/health``, the wire
  format of :mod:`xviz.remote`. Given a ``batch`` decorator (Ray Serve's ``serve.batch``), requests
  for predictions that arrive together are handed to the service together.
* :func:`deployment` wraps that app in a Ray Serve deployment (``@serve.ingress``, built on each
  replica; replicas, fractional GPUs, autoscaling); :func:`build` is the application builder for
  ``serve run`` and a KubeRay ``RayService``. ``xviz serve`` starts it (see ``xviz/__main__.py``).

Ray is needed only for the last layer (``pip install -r requirements-serve.txt``); the first two
need what the app already has (Starlette and uvicorn come with Streamlit).

Example:
    $ xviz serve --models kitchenware imagenet --port 8000          # Ray Serve on this machine
    $ XVIZ_INFERENCE=http://127.0.0.1:8000 streamlit run app.py     # the app, predictions there
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections import defaultdict
from typing import Any, Callable, Iterable

import torch

import xviz
from xviz import inference as I
from xviz.device import memory_format
from xviz.remote import MAX_BODY, REMOTE_OPS, Request, WireError, base_key, decode_request, encode_reply

MAX_BATCH = 8  # images per forward: xviz.inference.batch_limit's measured best at 150 px
BATCH_WAIT_S = 0.01  # how long a prediction waits for others to share its forward


class NotServed(LookupError):
    """This service does not serve the request (weights it does not hold, a precision it lacks)."""


class InferenceService:
    """Models by source, and the computation of requests for them.

    Args:
        models: sources for :func:`xviz.load_model` or already loaded :class:`xviz.LoadedModel`\\ s.
        device: where to load them (default: ``$XVIZ_DEVICE`` or the best available).

    Attributes:
        served: counters: requests answered, forwards shared by several images, the largest batch.
    """

    def __init__(self, models: Iterable[str | xviz.LoadedModel] = ("kitchenware",), device: str | None = None):
        self.models: dict[str, xviz.LoadedModel] = {}
        for source in models:
            m = source if isinstance(source, xviz.LoadedModel) else xviz.load_model(source, device=device)
            self.models[base_key(m.key)] = m
        self.served = {"requests": 0, "batches": 0, "largest_batch": 0}
        self._lock = threading.Lock()
        self.replica = f"{socket.gethostname()}:{os.getpid()}"

    def health(self) -> dict:
        return {"models": [{"key": k, "kind": m.kind, "source": m.source, "input_size": m.input_size,
                            "device": m.device_name, "fast_precision": m.fast_precision}
                           for k, m in self.models.items()],
                "replica": self.replica, "served": dict(self.served)}

    def resolve(self, req: Request) -> xviz.LoadedModel:
        """The loaded model for ``req`` at its input size and precision, or :class:`NotServed`."""
        model = self.models.get(req.model)
        if model is None:
            raise NotServed(f"weights {req.model} are not served here; served: {', '.join(self.models) or 'none'}")
        if req.precision != "fp32":
            if req.op != "logits" or model.fast_precision != req.precision:
                raise NotServed(f"{req.precision} {req.op} is not available here "
                               f"(fast precision here: {model.fast_precision or 'none'})")
            model = model.with_fast_mode(True)
        size = int(req.x.shape[-1])
        return model if size == model.input_size else model.with_input_size(size)

    def run(self, requests: list[Request]) -> list[Any]:
        """The answer to each request, in order: a tensor with one row per image (a map for an
        attribution), or the exception that request raised (only its own)."""
        answers: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            try:
                model = self.resolve(req)
            except NotServed as exc:
                answers[i] = exc
                continue
            if I.OPS[req.op].batchable:
                groups[(req.op, req.model, req.precision, req.x.shape[-1], I.OPS[req.op].shared(req.params))].append(i)
            else:
                answers[i] = self._one(model, req)
        for (op, *_), idx in groups.items():
            first = requests[idx[0]]
            model = self.resolve(first)
            x = torch.cat([requests[i].x for i in idx]).to(model.device)
            x = x.contiguous(memory_format=memory_format(model.device))
            try:
                with torch.no_grad():
                    out = I.OPS[op].fn(model, x, None, **I.OPS[op].batch_params([requests[i].params for i in idx]))
            except Exception:  # noqa: BLE001 - one bad request must not fail its neighbours
                for i in idx:
                    answers[i] = self._one(model, requests[i])
                continue
            with self._lock:
                self.served["batches"] += len(idx) > 1
                self.served["largest_batch"] = max(self.served["largest_batch"], len(idx))
            for j, i in enumerate(idx):
                answers[i] = out[j:j + 1]
        with self._lock:
            self.served["requests"] += len(requests)
        return answers

    def _one(self, model, req: Request):
        spec = I.OPS[req.op]
        x = req.x.to(model.device).contiguous(memory_format=memory_format(model.device))
        try:
            with torch.no_grad() if not spec.heavy else contextlib.nullcontext():
                return spec.fn(model, x, None, **req.params)
        except Exception as exc:  # noqa: BLE001 - handed to this request's caller
            return exc


def asgi_app(service: InferenceService, batch: Callable | None = None, engine: str = "xviz inference service"):
    """The service's HTTP face, a Starlette app.

    Args:
        service: what computes.
        batch: a decorator that turns ``async f(list) -> list`` into ``async f(item) -> item``,
            collecting the items of concurrent calls (Ray Serve's ``serve.batch(...)``); predictions
            and embeddings go through it. None: each request alone.
        engine: named in ``/v1/health`` and on the app's status line ("Ray Serve").
    """
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def compute(requests: list[Request]) -> list[Any]:
        # off the event loop: health checks and new requests are answered while the network runs
        return await asyncio.to_thread(service.run, requests)

    cheap = batch(compute) if batch is not None else None
    served = {"requests": 0}

    async def run(request):
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse({"error": f"request over {MAX_BODY:,} bytes"}, status_code=413)
        try:
            req = decode_request(body)
        except WireError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        t0 = time.perf_counter()
        if cheap is not None and I.OPS[req.op].batchable:
            answer = await cheap(req)
        else:
            answer = (await compute([req]))[0]
        if isinstance(answer, NotServed):
            return JSONResponse({"error": str(answer)}, status_code=404)
        if isinstance(answer, Exception):  # the request's own failure (an unknown class name, ...)
            return JSONResponse({"error": f"{type(answer).__name__}: {answer}"}, status_code=422)
        served["requests"] += 1
        info = {"replica": service.replica, "seconds": round(time.perf_counter() - t0, 4)}
        return Response(encode_reply(answer, info), media_type="application/octet-stream")

    async def health(request):
        return JSONResponse({**service.health(), "engine": engine, "ops": list(REMOTE_OPS)})

    return Starlette(routes=[Route("/v1/run", run, methods=["POST"]), Route("/v1/health", health, methods=["GET"])])


@contextlib.contextmanager
def background(app, host: str = "127.0.0.1", port: int = 0):
    """Serve ``app`` with uvicorn from a thread of this process; yields its address
    (``http://host:port``) and stops it on exit. For tests, benches and notebooks: the same app the
    Ray Serve deployment runs, without Ray.

    Example:
        >>> with serving.background(serving.asgi_app(serving.InferenceService(["kitchenware"]))) as url:
        ...     RemoteBackend(url).submit(m, "logits", x).result()
    """
    import uvicorn

    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True, name="xviz-serving")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the inference service did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def deployment(models: Iterable[str] = ("kitchenware",), *, replicas: int = 1, max_replicas: int | None = None,
               num_cpus: float | None = None, num_gpus: float = 0, max_batch: int = MAX_BATCH,
               batch_wait_s: float = BATCH_WAIT_S):
    """The Ray Serve application: ``replicas`` copies of :func:`asgi_app`, each with its own models.

    Args:
        models: sources each replica loads (a file path must exist on every node).
        replicas: replicas to start with; with ``max_replicas``, Serve autoscales between the two.
        num_cpus, num_gpus: per replica; fractions share a device (``num_gpus=0.25``: four per GPU).
        max_batch, batch_wait_s: ``serve.batch`` settings for predictions and embeddings.

    Returns:
        a bound Serve application, for ``serve.run``.
    """
    from ray import serve

    models = list(models)
    options: dict = {"ray_actor_options": {"num_cpus": num_cpus if num_cpus is not None else 1,
                                           "num_gpus": num_gpus},
                     # enough requests in a replica at once to fill a batch (Serve's default is 5)
                     "max_ongoing_requests": max(2 * max_batch, 16)}
    if max_replicas:
        options["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": max_replicas}
    else:
        options["num_replicas"] = replicas

    @serve.deployment(name="xviz", **options)
    @serve.ingress()
    class XvizInference:
        def __init__(self, models: list[str]):
            self.models = models

        def __serve_build_asgi_app__(self):
            # built on the replica: the models are loaded there, once per replica, with the app's
            # torch settings (threads, fp32 on CUDA), which load_model leaves alone
            xviz.device.configure()
            return asgi_app(InferenceService(self.models),
                            batch=serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=batch_wait_s),
                            engine="Ray Serve")

    return XvizInference.bind(models)


BUILD_ARGS = {"models", "replicas", "max_replicas", "num_cpus", "num_gpus"}


def build(args: dict):
    """Application builder for ``serve run xviz.serving:build models=kitchenware,imagenet`` and for a
    RayService's ``import_path`` (its ``args``): keys ``models`` (comma-separated), ``replicas``,
    ``max_replicas``, ``num_cpus``, ``num_gpus``."""
    unknown = set(args) - BUILD_ARGS
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(sorted(unknown))}; xviz.serving.build takes "
                         f"{', '.join(sorted(BUILD_ARGS))}")
    models = args.get("models", "kitchenware")
    models = models.split(",") if isinstance(models, str) else list(models)
    return deployment(models, replicas=int(args.get("replicas", 1)),
                      max_replicas=int(args["max_replicas"]) if args.get("max_replicas") else None,
                      num_cpus=float(args["num_cpus"]) if args.get("num_cpus") else None,
                      num_gpus=float(args.get("num_gpus", 0)))
