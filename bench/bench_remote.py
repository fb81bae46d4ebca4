"""Inference over the wire (issue 16): what a request to the inference service costs against the
same request in the app's process, and what Ray Serve's request batching buys.

    python bench/bench_remote.py            # Ray Serve if installed, else the same app under uvicorn
    python bench/bench_remote.py --no-ray

Rows (ratios measured side by side in one run, interleaved, so a busy machine shifts both sides):
* one prediction over the wire / in process (batch 1, the demo model at 150 px): the wire's
  overhead (encode, HTTP, Serve's proxy, decode) on top of the same forward;
* one Grad-CAM over the wire / in process;
* 16 different predictions sent at once over the wire / the same 16 sent one after another over the
  wire: what concurrency plus ``@serve.batch`` buy (largest batch seen on the replica);
* 16 at once over the wire / 16 at once into the in-process queue (which micro-batches too).

On one machine the service competes with the bench for the same cores, so the ratios measure the
overhead, not the gain: the gain of a service is the cores and GPUs of other machines.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import row  # noqa: E402
from xviz import inference, remote, serving  # noqa: E402

CONCURRENT = 16


@contextlib.contextmanager
def service(model, use_ray: bool):
    """(address, engine) of a running service holding ``model``: Ray Serve on this machine, or the
    same ASGI app under uvicorn in a thread."""
    if use_ray:
        import ray
        from ray import serve

        from bench.appserver import free_port

        port = free_port()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(serving.deployment([model.kind], num_cpus=1), name="xviz", route_prefix="/")
            yield f"http://127.0.0.1:{port}", "Ray Serve"
        finally:
            serve.shutdown()
            ray.shutdown()
    else:
        with serving.background(serving.asgi_app(serving.InferenceService([model]))) as url:
            yield url, "uvicorn, no batching"


def measure(use_ray: bool, rounds: int = 7) -> dict:
    import xviz

    model = xviz.load_model("kitchenware")
    photos = sorted((ROOT / "xviz" / "data" / "examples").glob("*.jpg"))
    img = xviz.load_image(photos[0].read_bytes())
    x = model.preprocess(img)
    crops = [model.preprocess(img.crop((i, i, img.width - 2 * i, img.height - i))) for i in range(CONCURRENT * rounds)]
    local = inference.InferenceQueue()
    out: dict = {}
    with service(model, use_ray) as (url, engine):
        wire = remote.RemoteBackend(url, local=local, timeout_s=120)
        assert wire.check(), wire.problem()
        out["engine"] = engine
        for _ in range(3):  # warm-up both sides (fused copies, Serve's proxy, connections)
            wire.submit(model, "logits", x + 0.001 * _).result(), local.submit(model, "logits", x - 0.001 * _).result()
        pred, cam, burst, burst_local = [], [], [], []
        for r in range(rounds):
            xr = x + 1e-3 * (r + 10)  # a new image every round: nothing shared, nothing cached
            t0 = time.perf_counter()
            wire.submit(model, "logits", xr).result()
            t1 = time.perf_counter()
            local.submit(model, "logits", xr).result()
            t2 = time.perf_counter()
            pred.append((t1 - t0) / (t2 - t1))
            t0 = time.perf_counter()
            wire.submit(model, "attribution", xr, target=0, method="gradcam").result()
            t1 = time.perf_counter()
            local.submit(model, "attribution", xr, target=0, method="gradcam").result()
            t2 = time.perf_counter()
            cam.append((t1 - t0) / (t2 - t1))
            batch = crops[r * CONCURRENT:(r + 1) * CONCURRENT]
            t0 = time.perf_counter()
            for c in batch:
                wire.submit(model, "logits", c + 0.5).result()
            t1 = time.perf_counter()
            [t.result() for t in [wire.submit(model, "logits", c) for c in batch]]
            t2 = time.perf_counter()
            [t.result() for t in [local.submit(model, "logits", c - 0.5) for c in batch]]
            t3 = time.perf_counter()
            burst.append((t2 - t1) / (t1 - t0))
            burst_local.append((t2 - t1) / (t3 - t2))
        assert wire.served["fallbacks"] == 0, "the service failed during the bench"
        with urllib.request.urlopen(url + "/v1/health", timeout=30) as resp:
            out["largest_batch"] = json.loads(resp.read())["served"]["largest_batch"]
        wire.close()
    out.update(prediction=statistics.median(pred), gradcam=statistics.median(cam),
               burst_vs_sequential=statistics.median(burst), burst_vs_local=statistics.median(burst_local))
    return out


def rows(use_ray: bool | None = None) -> list[dict]:
    if use_ray is None:
        try:
            import ray.serve  # noqa: F401
            use_ray = True
        except ImportError:
            use_ray = False
    m = measure(use_ray)
    engine = m["engine"]
    return [
        row("remote: one prediction over the wire / in process, 150 px", m["prediction"], "x", note=engine),
        row("remote: one Grad-CAM over the wire / in process, 150 px", m["gradcam"], "x", note=engine),
        row(f"remote: {CONCURRENT} predictions at once / one after another, over the wire", m["burst_vs_sequential"],
            "x", note=f"{engine}; largest batch on the replica {m['largest_batch']}"),
        row(f"remote: {CONCURRENT} predictions at once, over the wire / in-process queue", m["burst_vs_local"], "x",
            note=engine),
    ]


if __name__ == "__main__":
    from bench.run import print_table

    print_table(rows(False if "--no-ray" in sys.argv else None))
