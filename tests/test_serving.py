"""The inference service (xviz.serving) and its client (xviz.remote), over real HTTP.

The service under test is the ASGI app the Ray Serve deployment ingresses, served here by uvicorn
from a thread (Ray is not a CI dependency; ``test_ray_serve_deployment`` runs it on Ray Serve where
Ray is installed). Every number is the demo model's on real photos; failures are real too: a port
nobody listens on, a socket that accepts and never answers, a request slower than its limit.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import pickle
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

import xviz
from xviz import attributions as A
from xviz import inference as I
from xviz import remote, serving
from helpers import mentions, rel_err

WAIT = 120  # seconds: generous on a shared machine; a hang still fails


@pytest.fixture(scope="module")
def service(kitchenware):
    svc = serving.InferenceService([kitchenware])
    with serving.background(serving.asgi_app(svc)) as url:
        yield svc, url


@pytest.fixture
def client(service):
    b = remote.RemoteBackend(service[1], local=I.InferenceQueue(idle_exit_s=5))
    assert b.check(), b.problem()
    yield b
    b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _crop(photo, i: int):
    return photo.crop((3 * i, 2 * i, photo.width - i, photo.height - 2 * i))


def test_remote_answers_equal_in_process(client, service, kitchenware, photo):
    """Predictions, embeddings and Grad-CAM over the wire equal the local queue's (the service runs
    the same ops), and they really came over the wire."""
    svc, _ = service
    before = svc.served["requests"]
    x = kitchenware.preprocess(photo)
    local = I.InferenceQueue(idle_exit_s=5)
    try:
        logits = local.submit(kitchenware, "logits", x).result(WAIT)
        embedding = local.submit(kitchenware, "embedding", x).result(WAIT)
        target = int(logits.argmax())
        cam = local.submit(kitchenware, "attribution", x, target=target, method="gradcam").result(WAIT)
    finally:
        local.close()
    assert rel_err(client.submit(kitchenware, "logits", x).result(WAIT), logits) <= 1e-5
    assert rel_err(client.submit(kitchenware, "embedding", x).result(WAIT), embedding) <= 1e-5
    remote_cam = client.submit(kitchenware, "attribution", x, target=target, method="gradcam").result(WAIT)
    assert remote_cam.shape == cam.shape == (kitchenware.input_size,) * 2
    assert rel_err(remote_cam, cam) <= 1e-5
    assert client.served["remote"] == 3 and client.served["fallbacks"] == 0
    assert svc.served["requests"] - before == 3
    assert client.problem() is None
    assert "at " + service[1] in client.location(kitchenware) and "feature maps in this process" in client.location(kitchenware)


def test_feature_maps_and_other_weights_stay_local(client, kitchenware, photo):
    """The capture (tens of MB of maps, the hooked network) never goes over the wire, nor weights the
    service does not hold; neither counts as a failure of the service."""
    x = kitchenware.preprocess(photo)
    cap = client.submit(kitchenware, "capture", x).result(WAIT)
    assert cap.logits.size == 6
    untrained = xviz.loaded.untrained()
    assert client.submit(untrained, "logits", untrained.preprocess(photo)).result(WAIT).shape == (1, 1000)
    assert client.served["local"] == 2 and client.served["remote"] == 0
    assert client.problem() is None
    assert "in this process for these weights" in client.location(untrained)
    assert "serves kitchenware" in client.location(untrained)


def test_service_batches_predictions_that_arrive_together(kitchenware, photo):
    """What serve.batch hands the service together shares one forward, and each row is the answer a
    request alone gets."""
    svc = serving.InferenceService([kitchenware])
    xs = [kitchenware.preprocess(_crop(photo, i)) for i in range(4)]
    reqs = [remote.decode_request(remote.encode_request(kitchenware, "logits", x, {})) for x in xs]
    together = svc.run(reqs)
    assert svc.served["largest_batch"] == 4 and svc.served["batches"] == 1
    for x, row in zip(xs, together):
        assert rel_err(row, kitchenware.logits(x)) <= 1e-5


def test_identical_requests_share_one_trip(client, service, kitchenware, photo):
    x = kitchenware.preprocess(_crop(photo, 7))
    tickets = [client.submit(kitchenware, "logits", x, key=("same",)) for _ in range(3)]
    rows = [t.result(WAIT) for t in tickets]
    assert client.served["remote"] == 1 and client.served["shared"] == 2
    assert all(torch.equal(r, rows[0]) for r in rows)


def test_unreachable_service_falls_back_and_says_so(kitchenware, photo):
    address = f"http://127.0.0.1:{_free_port()}"  # nobody listens there
    b = remote.RemoteBackend(address, local=I.InferenceQueue(idle_exit_s=5), timeout_s=5)
    try:
        assert not b.check()
        x = kitchenware.preprocess(photo)
        assert rel_err(b.submit(kitchenware, "logits", x).result(WAIT), kitchenware.logits(x)) <= 1e-5
        assert b.served["local"] == 1
        problem = b.problem()
        assert mentions(problem, address, "could not be reached", "computes here instead", "every 30 s"), problem
        assert b.location(kitchenware).startswith("in this process")
    finally:
        b.close()


@pytest.fixture
def black_hole():
    """A socket that accepts connections and never answers: a service stuck under load."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


def test_silent_service_times_out_and_falls_back(black_hole, kitchenware, photo):
    b = remote.RemoteBackend(black_hole, local=I.InferenceQueue(idle_exit_s=5), timeout_s=0.5)
    try:
        assert not b.check()
        assert mentions(b.problem(), "did not answer within 0.5 s")
        x = kitchenware.preprocess(photo)
        assert rel_err(b.submit(kitchenware, "logits", x).result(WAIT), kitchenware.logits(x)) <= 1e-5
    finally:
        b.close()


def test_request_slower_than_its_limit_is_computed_here(service, kitchenware, photo):
    """A healthy service whose answer takes longer than the limit: the request is computed locally,
    the student gets the same map, and the status line says why."""
    b = remote.RemoteBackend(service[1], local=I.InferenceQueue(idle_exit_s=5), heavy_timeout_s=0.02)
    try:
        assert b.check()
        x = kitchenware.preprocess(photo)
        # a backward pass through Xception takes far longer than 20 ms, on any machine
        cam = b.submit(kitchenware, "attribution", x, target=0, method="gradcam").result(WAIT)
        assert rel_err(cam, A.attribute(kitchenware, x, 0, "gradcam")) <= 1e-5
        assert b.served["fallbacks"] == 1
        assert mentions(b.problem(), "did not answer within 0.02 s")
        # until the next health check, later requests go straight to the local queue
        b.submit(kitchenware, "logits", x).result(WAIT)
        assert b.served["local"] == 1 and b.served["remote"] == 0
    finally:
        b.close()


def test_cancelled_request_is_dropped(client, kitchenware, photo):
    t = client.submit(kitchenware, "attribution", kitchenware.preprocess(_crop(photo, 11)), target=1,
                      method="gradcam", session="tab")
    assert client.tickets("tab") == [t]
    assert client.cancel_session("tab") == 1
    assert t.place().state == I.DONE
    with pytest.raises(cf.CancelledError):
        t.result(1)


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/v1/run", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as r:
            return r.status, {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_malformed_requests_are_refused_not_run(service, kitchenware):
    """The service reads safetensors and JSON only: a pickle, garbage, a wrong shape or an unknown
    op is a 400 with a reason, and unknown weights a 404."""
    url = service[1]
    assert _post(url, pickle.dumps({"x": 1}))[0] == 400
    assert _post(url, b"\x00" * 64)[0] == 400
    x = torch.zeros(1, 3, 2000, 2000)
    code, err = _post(url, remote.encode_request(kitchenware, "logits", x, {}))
    assert code == 400 and "1024" in err["error"]
    code, err = _post(url, remote.encode_request(kitchenware, "capture", torch.zeros(1, 3, 150, 150), {}))
    assert code == 400 and "not served" in err["error"]
    code, err = _post(url, remote.encode_request(xviz.loaded.untrained(), "logits", torch.zeros(1, 3, 150, 150), {}))
    assert code == 404 and "untrained" in err["error"]
    with urllib.request.urlopen(url + "/v1/health", timeout=WAIT) as r:
        health = json.loads(r.read())
    assert [m["kind"] for m in health["models"]] == ["kitchenware"]


def test_app_uses_the_service_named_in_the_environment(monkeypatch, service):
    monkeypatch.setenv(remote.ENV, service[1])
    old = I.set_backend(None)
    try:
        b = I.backend()
        assert isinstance(b, remote.RemoteBackend) and b.address == service[1]
        b.close()
    finally:
        I.set_backend(old)


def _uploaded_crop(photo, i: int) -> bytes:
    buf = io.BytesIO()
    _crop(photo, i).save(buf, format="PNG")  # a picture no other test used: not in the app's stores
    return buf.getvalue()


@pytest.mark.parametrize("reachable", [True, False], ids=["service", "service down"])
def test_status_line_says_where_inference_runs(open_app, service, photo, reachable):
    address = service[1] if reachable else f"http://127.0.0.1:{_free_port()}"
    b = remote.RemoteBackend(address, timeout_s=5)
    old = I.set_backend(b)
    try:
        at = open_app()
        at.sidebar.radio(key="image_source").set_value("Upload").run()
        at.sidebar.get("file_uploader")[0].set_value(("crop.png", _uploaded_crop(photo, 20 + reachable), "image/png"))
        at.run()
        assert not at.exception
        captions = [c.value for c in at.sidebar.caption]
        warnings = " ".join(w.value for w in at.sidebar.warning)
        if reachable:
            assert mentions(captions, "**Inference:**", f"at {address}")
            assert "could not be reached" not in warnings
            assert b.served["remote"] >= 1
        else:
            assert mentions(captions, "**Inference:** in this process")
            assert mentions(warnings, address, "could not be reached", "computes here instead")
            assert b.served["remote"] == 0
        assert any("%**" in m.value for m in at.markdown)  # the predictions are on the page either way
    finally:
        I.set_backend(old)
        b.close()


def test_ray_serve_deployment(kitchenware, photo):
    """The Serve deployment itself: the same app on a Ray replica with serve.batch, answering the
    client with the numbers of in-process inference; predictions sent together are batched."""
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install -r requirements-serve.txt); "
                                            "CI does not install it, so the app it runs is tested above under uvicorn")
    import ray
    from ray import serve

    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(serving.__file__).parents[1])}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(serving.deployment([kitchenware.kind], num_cpus=1, batch_wait_s=0.05), name="xviz", route_prefix="/")
        b = remote.RemoteBackend(f"127.0.0.1:{port}", timeout_s=60)
        assert b.check(), b.problem()
        assert b.location(kitchenware).startswith("Ray Serve at ")
        xs = [kitchenware.preprocess(_crop(photo, i)) for i in range(6)]
        tickets = [b.submit(kitchenware, "logits", x) for x in xs]
        for x, t in zip(xs, tickets):
            assert rel_err(t.result(WAIT), kitchenware.logits(x)) <= 1e-5
        cam = b.submit(kitchenware, "attribution", xs[0], target=0, method="gradcam").result(WAIT)
        assert rel_err(cam, A.attribute(kitchenware, xs[0], 0, "gradcam")) <= 1e-5
        assert b.served["remote"] == 7 and b.served["fallbacks"] == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=WAIT) as r:
            health = json.loads(r.read())
        assert health["engine"] == "Ray Serve" and health["served"]["largest_batch"] > 1, health
        b.close()
    finally:
        serve.shutdown()
        ray.shutdown()


def test_serve_command_starts_the_service(kitchenware_dir, kitchenware, photo):
    """The documented start command, as a process: `python -m xviz serve --no-ray` (the Ray Serve
    form is `test_ray_serve_deployment`'s application, started the same way without --no-ray)."""
    import subprocess
    import sys
    import time

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "xviz", "serve", "--no-ray", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        b = remote.RemoteBackend(f"127.0.0.1:{port}", timeout_s=30)
        deadline = time.monotonic() + WAIT
        while not b.check(timeout_s=2):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "xviz serve did not answer"
            time.sleep(0.5)
        assert "uvicorn" in b.location(kitchenware)
        x = kitchenware.preprocess(photo)
        assert rel_err(b.submit(kitchenware, "logits", x).result(WAIT), kitchenware.logits(x)) <= 1e-5
        assert b.served["remote"] == 1
        b.close()
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_tab_that_lost_its_session_is_detected():
    """A reconnecting browser names its previous session (third Sec-WebSocket-Protocol entry); a
    server that starts a fresh session for it must tell the student their upload is gone."""
    from xviz.ui.sidebar import came_back_without_session

    assert came_back_without_session({"Sec-Websocket-Protocol": "streamlit, xsrf-token, old-id"}, "new-id")
    assert not came_back_without_session({"Sec-Websocket-Protocol": "streamlit, xsrf-token, same-id"}, "same-id")
    assert not came_back_without_session({"Sec-Websocket-Protocol": "streamlit, xsrf-token"}, "new-id")
    assert not came_back_without_session({}, None)


def test_a_tab_that_lost_its_session_is_told_to_upload_again(open_app, photo):
    from xviz.ui import state
    from xviz.ui.sidebar import SESSION_LOST

    at = open_app(**{state.SESSION_LOST: True})
    assert not at.exception
    assert any(SESSION_LOST in w.value for w in at.sidebar.warning)
    at.sidebar.radio(key="image_source").set_value("Upload").run()
    at.sidebar.get("file_uploader")[0].set_value(("again.png", _uploaded_crop(photo, 30), "image/png"))
    at.run()
    assert not at.exception
    assert not any(SESSION_LOST in w.value for w in at.sidebar.warning)
    assert at.session_state["image_name"] == "upload: again.png"
