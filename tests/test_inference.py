"""The inference queue (xviz.inference): order, micro-batching, failures, cancellation, place in line.

Scheduling is made observable with two small ops registered for the test: ``gate`` (heavy) holds
the worker until the test opens it, so requests pile up exactly as a class's would; ``record``
notes the order in which requests are computed. Everything that computes a picture or a number
runs the real demo model.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import numpy as np
import pytest
import torch

import xviz
from xviz import inference as I
from helpers import rel_err

WAIT = 60  # seconds: generous, the machine may be shared; a deadlock still fails the test


@pytest.fixture
def queue():
    q = I.InferenceQueue(idle_exit_s=5)
    yield q
    q.close()


@pytest.fixture
def gate(monkeypatch):
    """op ``gate``: a heavy request that holds the worker until ``event`` is set."""
    def fn(model, x, progress, *, event, started=None):
        if started is not None:
            started.set()
        if not event.wait(WAIT):
            raise TimeoutError("the test never opened the gate")
        return "opened"
    monkeypatch.setitem(I.OPS, "gate", I.Op("gate", fn, heavy=True))


@pytest.fixture
def record(monkeypatch):
    """ops ``record`` (cheap) and ``record_heavy``: append their ``tag`` to ``log`` when computed."""
    def fn(model, x, progress, *, tag, log):
        log.append(tag)
        return tag
    monkeypatch.setitem(I.OPS, "record", I.Op("record", fn, heavy=False))
    monkeypatch.setitem(I.OPS, "record_heavy", I.Op("record_heavy", fn, heavy=True))


def _blocked(queue, model, x):
    """Submit a gate and wait until the worker is inside it; returns (event to open it, ticket)."""
    event, started = threading.Event(), threading.Event()
    ticket = queue.submit(model, "gate", x, event=event, started=started)
    assert started.wait(WAIT), "the worker never started the gate"
    return event, ticket


@pytest.fixture(scope="module")
def inputs(kitchenware, kitchenware_images):
    """Eight preprocessed real photos at the demo model's 150 px."""
    return [kitchenware.preprocess(xviz.load_image(p.read_bytes())) for p in kitchenware_images[:8]]


def test_arrival_order_is_kept(queue, kitchenware, inputs, gate, record):
    x = inputs[0]
    event, _ = _blocked(queue, kitchenware, x)
    log = []
    heavy = [queue.submit(kitchenware, "record_heavy", x, tag=f"h{i}", log=log) for i in range(4)]
    cheap = [queue.submit(kitchenware, "record", x, tag=f"c{i}", log=log) for i in range(4)]
    event.set()
    assert [t.result(WAIT) for t in heavy + cheap]
    # cheap requests go before heavy ones that waited with them; each kind in arrival order
    assert log == ["c0", "c1", "c2", "c3", "h0", "h1", "h2", "h3"]


def test_micro_batched_logits_equal_batch_one(queue, kitchenware, inputs, gate):
    event, _ = _blocked(queue, kitchenware, inputs[0])
    tickets = [queue.submit(kitchenware, "logits", x) for x in inputs]
    embeds = [queue.submit(kitchenware, "embedding", x) for x in inputs]
    event.set()
    for x, t, e in zip(inputs, tickets, embeds):
        assert rel_err(t.result(WAIT), kitchenware.logits(x)) <= 1e-5
        assert t.result().shape == (1, len(kitchenware.labels))
        assert rel_err(e.result(WAIT), kitchenware.embedding(x)) <= 1e-5
        assert e.result().shape == (1, 2048)
    assert queue.served["largest_batch"] == I.batch_limit(150) == 8  # they really shared forwards


def test_a_predictions_forward_serves_grad_cam_for_every_class(queue, kitchenware, inputs, gate):
    """"forward" is micro-batched like "logits", and its features give the last layer's Grad-CAM
    with the head alone ("gradcam_features"): the same map as a Grad-CAM request's own forward."""
    from xviz import attributions as A

    event, _ = _blocked(queue, kitchenware, inputs[0])
    tickets = [queue.submit(kitchenware, "forward", x) for x in inputs]
    event.set()
    outs = [t.result(WAIT) for t in tickets]
    assert queue.served["largest_batch"] == 8
    for x, out in zip(inputs, outs):
        assert rel_err(out.logits, kitchenware.logits(x)) <= 1e-5
        assert out.features.shape == (1, 2048, 5, 5) and out.features.dtype == torch.float32
    x, features = inputs[3], outs[3].features
    for target in (None, 0, 4):
        heat = queue.submit(kitchenware, "gradcam_features", features, target=target).result(WAIT)
        assert heat.shape == (150, 150)
        assert rel_err(heat, A.gradcam(kitchenware, x, target)) <= 1e-5


def test_grad_cam_requests_waiting_together_share_one_pass_each_with_its_own_class(queue, kitchenware, inputs,
                                                                                    gate):
    """A class's "gradcam_features" requests, each for its own class (or the predicted one), go
    through the head together, and each map is the one a request alone gets."""
    from xviz import attributions as A

    features = [queue.submit(kitchenware, "forward", x).result(WAIT).features for x in inputs[:4]]
    targets = [None, 0, "cup", 5]
    alone = [A.gradcam_from_features(kitchenware, f, t) for f, t in zip(features, targets)]
    event, _ = _blocked(queue, kitchenware, inputs[0])
    batches = queue.served["batches"]
    tickets = [queue.submit(kitchenware, "gradcam_features", f, target=t) for f, t in zip(features, targets)]
    event.set()
    scale = max(heat.abs().max() for heat in alone)  # a class that isn't there can have an all-zero map
    assert scale > 0
    for ticket, heat in zip(tickets, alone):
        assert ticket.result(WAIT).shape == (150, 150)
        assert (ticket.result() - heat).abs().max() <= 1e-5 * scale
    assert queue.served["batches"] == batches + 1 and queue.served["largest_batch"] >= 4
    # a class the model doesn't have fails that request only, not the one it waited with
    event, _ = _blocked(queue, kitchenware, inputs[0])
    bad = queue.submit(kitchenware, "gradcam_features", features[0], target=99)
    good = queue.submit(kitchenware, "gradcam_features", features[1], target=0)
    event.set()
    with pytest.raises(ValueError, match="out of range"):
        bad.result(WAIT)
    assert (good.result(WAIT) - alone[1]).abs().max() <= 1e-5 * scale


def test_captures_waiting_together_share_one_pass(queue, kitchenware, inputs, gate):
    """Heavy requests keep arrival order, but captures right behind each other go through together."""
    event, _ = _blocked(queue, kitchenware, inputs[0])
    captures = [queue.submit(kitchenware, "capture", x) for x in inputs[:3]]
    grad_cam = queue.submit(kitchenware, "attribution", inputs[3], target=0)
    later = queue.submit(kitchenware, "capture", inputs[4])
    event.set()
    results = [t.result(WAIT) for t in captures + [later]]
    assert grad_cam.result(WAIT).shape == (150, 150)
    assert queue.served["largest_batch"] == 3  # the three in a row; the one after Grad-CAM alone
    for x, cap in zip(inputs[:3] + inputs[4:5], results):
        assert rel_err(torch.from_numpy(cap.logits), kitchenware.logits(x)[0]) <= 1e-5


def test_fast_mode_and_fp32_requests_never_share_a_batch(queue, kitchenware, inputs, gate):
    if kitchenware.fast_precision is None:
        pytest.skip(f"{kitchenware.device_name} has no fast mode (no native bf16, no CUDA)")
    fast = kitchenware.with_fast_mode(True)
    fast.predictor.prepare(inputs[0].shape, fast=True, wait=True)
    event, _ = _blocked(queue, kitchenware, inputs[0])
    exact = [queue.submit(kitchenware, "logits", x) for x in inputs[:2]]
    quick = [queue.submit(fast, "logits", x) for x in inputs[:2]]
    event.set()
    for x, e, q in zip(inputs, exact, quick):
        reference = kitchenware.logits(x)
        assert rel_err(e.result(WAIT), reference) <= 1e-5
        assert rel_err(q.result(WAIT), reference) > 1e-4  # bf16's answer, not the fp32 batch's


def test_no_batching_at_299(queue, kitchenware, inputs, gate):
    m = kitchenware.with_input_size(299)
    x = torch.nn.functional.interpolate(inputs[0], size=299)
    event, _ = _blocked(queue, m, x)
    tickets = [queue.submit(m, "logits", x + i) for i in range(2)]
    event.set()
    [t.result(WAIT) for t in tickets]
    assert queue.served["batches"] == 0


def test_an_exception_fails_only_its_own_request(queue, kitchenware, inputs, gate, monkeypatch):
    def picky(model, x, progress):
        if (x[:, 0, 0, 0] < -5).any():
            raise ValueError("this image is bad")
        return x.mean(dim=(1, 2, 3))
    monkeypatch.setitem(I.OPS, "picky", I.Op("picky", picky, heavy=False, batchable=True))
    event, _ = _blocked(queue, kitchenware, inputs[0])
    bad = inputs[1].clone()
    bad[0, 0, 0, 0] = -10
    tickets = [queue.submit(kitchenware, "picky", x) for x in (inputs[0], bad, inputs[2])]
    tiny = queue.submit(kitchenware, "logits", torch.zeros(1, 3, 40, 40))  # below Xception's 71 px
    fine = queue.submit(kitchenware, "logits", inputs[3])
    event.set()
    with pytest.raises(ValueError, match="bad"):
        tickets[1].result(WAIT)
    with pytest.raises(ValueError, match="at least"):
        tiny.result(WAIT)
    assert float(tickets[0].result(WAIT)) == pytest.approx(float(inputs[0].mean()), rel=1e-5)
    assert float(tickets[2].result(WAIT)) == pytest.approx(float(inputs[2].mean()), rel=1e-5)
    assert rel_err(fine.result(WAIT), kitchenware.logits(inputs[3])) <= 1e-5


def test_a_cancelled_request_is_not_computed(queue, kitchenware, inputs, gate, record):
    x = inputs[0]
    event, _ = _blocked(queue, kitchenware, x)
    log = []
    dropped = queue.submit(kitchenware, "record", x, tag="cancelled", log=log)
    tab = [queue.submit(kitchenware, "record_heavy", x, tag=f"tab{i}", log=log, session="tab") for i in range(2)]
    kept = queue.submit(kitchenware, "record_heavy", x, tag="kept", log=log, session="other")
    assert dropped.cancel()
    assert queue.cancel_session("tab") == 2
    event.set()
    assert kept.result(WAIT) == "kept"
    assert log == ["kept"]
    assert queue.served["dropped"] == 3
    for t in (dropped, *tab):
        assert t.place().state == I.DONE
        with pytest.raises(cf.CancelledError):
            t.result(0)


def test_identical_requests_share_one_computation(queue, kitchenware, inputs, gate, record):
    x = inputs[0]
    event, _ = _blocked(queue, kitchenware, x)
    a = queue.submit(kitchenware, "logits", x)
    b = queue.submit(kitchenware, "logits", x.clone())  # same content, another tensor
    c = queue.submit(kitchenware, "logits", x)
    assert c.cancel()  # one of them goes away: the others still get the result
    event.set()
    assert torch.equal(a.result(WAIT), b.result(WAIT))
    assert queue.served["shared"] == 2 and queue.served["jobs"] == 2  # the gate and one forward


def test_a_rerun_keeps_its_place(queue, kitchenware, inputs, gate, record):
    x = inputs[0]
    event, _ = _blocked(queue, kitchenware, x)
    log = []
    first = queue.submit(kitchenware, "record_heavy", x, tag="first", log=log)
    second = queue.submit(kitchenware, "record_heavy", x, tag="second", log=log)
    first.cancel()  # the page reran (a widget changed) and asks again for the same thing
    again = queue.submit(kitchenware, "record_heavy", x, tag="first", log=log)
    assert again.place().ahead == 1  # only the gate: still in front of "second"
    event.set()
    assert (again.result(WAIT), second.result(WAIT)) == ("first", "second")
    assert log == ["first", "second"]


def test_no_deadlock_when_a_session_disconnects_mid_wait(queue, kitchenware, inputs, gate, monkeypatch):
    steps = []

    def long(model, x, progress, *, n):
        for i in range(n):
            time.sleep(0.01)
            steps.append(i)
            progress(i + 1, n)
        return "finished"
    monkeypatch.setitem(I.OPS, "long", I.Op("long", long, heavy=True))
    x = inputs[0]
    event, _ = _blocked(queue, kitchenware, x)
    waiting = queue.submit(kitchenware, "logits", x, session="tab")
    outcome = {}

    def student():
        try:
            outcome["value"] = waiting.result(WAIT)
        except cf.CancelledError:
            outcome["cancelled"] = True
    thread = threading.Thread(target=student)
    thread.start()
    time.sleep(0.05)
    assert queue.cancel_session("tab") == 1  # the tab closes while its script waits
    thread.join(WAIT)
    assert not thread.is_alive() and outcome == {"cancelled": True}
    event.set()
    # a running long request that loses its last waiter stops at its next progress report
    running = queue.submit(kitchenware, "long", x, n=1000, session="tab2")
    while running.place().state != I.RUNNING:
        time.sleep(0.01)
    queue.cancel_session("tab2")
    after = queue.submit(kitchenware, "logits", x)
    assert rel_err(after.result(WAIT), kitchenware.logits(x)) <= 1e-5
    assert len(steps) < 1000


def test_cheap_requests_are_served_while_a_long_one_runs(queue, kitchenware, inputs):
    x = inputs[0]
    expected = [kitchenware.logits(xi) for xi in inputs[1:4]]  # now: the model's lock is busy later
    reference = xviz.attributions.integrated_gradients(kitchenware, x, 0, steps=24, batch_size=2).map
    ig = queue.submit(kitchenware, "attribution", x, target=0, method="integrated_gradients", steps=24,
                      batch_size=2)
    while ig.place().state != I.RUNNING:
        time.sleep(0.005)
    predictions = [queue.submit(kitchenware, "logits", xi) for xi in inputs[1:4]]
    for t, want in zip(predictions, expected):
        assert rel_err(t.result(WAIT), want) <= 1e-5
        assert not ig.done(), "a prediction waited for the whole Integrated Gradients run"
    heat = ig.result(WAIT)
    assert rel_err(heat, reference) <= 1e-5  # pausing for the predictions changed nothing


def test_place_in_line_and_estimate(queue, kitchenware, inputs, gate, record):
    x = inputs[0]
    event, blocker = _blocked(queue, kitchenware, x)
    log = []
    heavy = [queue.submit(kitchenware, "record_heavy", x, tag=i, log=log) for i in range(3)]
    cheap = queue.submit(kitchenware, "record", x, tag="c", log=log)
    assert blocker.place().state == I.RUNNING
    places = [t.place() for t in heavy]
    assert [p.state for p in places] == [I.QUEUED] * 3
    # the gate is running; the cheap request goes before every heavy one
    assert [p.ahead for p in places] == [2, 3, 4]
    assert cheap.place().ahead == 1
    assert places[0].eta_s < places[1].eta_s < places[2].eta_s
    assert queue.pending(kitchenware) == 4
    event.set()
    [t.result(WAIT) for t in (*heavy, cheap)]
    assert heavy[2].place() == I.Place(I.DONE)
    assert queue.pending() == 0


def test_submit_validates_its_arguments(queue, kitchenware, inputs):
    with pytest.raises(ValueError, match="unknown op"):
        queue.submit(kitchenware, "telepathy", inputs[0])
    with pytest.raises(ValueError, match="one preprocessed image"):
        queue.submit(kitchenware, "logits", torch.cat(inputs[:2]))


def test_the_process_backend_is_replaceable(kitchenware, inputs):
    """A remote backend only implements the interface; xviz.inference.run() then goes through it."""
    calls = []

    class Echo(I.Backend):
        def submit(self, model, op, x, *, key=None, session=None, **params):
            calls.append((model.key, op, tuple(x.shape), params))
            t = I.Ticket(self, op, session)
            t.future.set_result("remote answer")
            return t

        def place(self, ticket):
            return I.Place(I.DONE)

        def cancel(self, ticket):
            return ticket.future.cancel()

        def tickets(self, session):
            return []

    old = I.set_backend(Echo())
    try:
        assert I.run(kitchenware, "logits", inputs[0]) == "remote answer"
        assert calls == [(kitchenware.key, "logits", (1, 3, 150, 150), {})]
    finally:
        I.set_backend(old)


def test_top_k_is_the_softmax_of_the_logits_most_likely_first(kitchenware, photo):
    """Predictions are read in numpy (a page run holds the GIL throughout): the same classes and
    probabilities as torch's softmax and topk, from a tensor or from stored (read-only) logits."""
    logits = kitchenware.logits(kitchenware.preprocess(photo))[0]
    probs = logits.softmax(-1)
    want = probs.topk(4)
    stored = logits.numpy().copy()
    stored.flags.writeable = False
    for given in (logits, stored):
        got = xviz.loaded.top_k(kitchenware.labels, given, 4)
        assert [i for i, _, _ in got] == want.indices.tolist()
        assert [label for _, label, _ in got] == [kitchenware.labels[i] for i in want.indices.tolist()]
        assert np.allclose([p for _, _, p in got], want.values.tolist(), rtol=1e-6, atol=1e-9)
    assert len(xviz.loaded.top_k(kitchenware.labels, logits, 100)) == len(kitchenware.labels)
    tied = xviz.loaded.top_k(["a", "b", "c"], np.zeros(3, np.float32), 3)
    assert [label for _, label, _ in tied] == ["a", "b", "c"] and all(abs(p - 1 / 3) < 1e-7 for _, _, p in tied)
    assert xviz.loaded.top_k([], np.zeros(0, np.float32)) == []
