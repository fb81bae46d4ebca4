"""A class teaching at once: N sessions each name two classes, upload photos of each, press Teach and
use the taught model, against one fresh `streamlit run app.py`; the server's memory is the budget.

    python bench/load_teach.py                          # 30 students, 2 classes x 10 photos each
    python bench/load_teach.py --sessions 5 --per-class 20

Issue 13: "thirty students teaching at once keep the server under 2 GB". Each student is a headless
client speaking the app's websocket protocol (bench/wsclient.py, as bench/load_test.py's class): it
opens the app, goes to *Teach it new classes*, adds two classes with the text box and the button,
uploads ``--per-class`` photos to each in one multi-file upload, presses Teach (every sample is
embedded through the shared inference queue, then the head is trained and evaluated), chooses
"Taught: …" in the sidebar and opens Predict on it. Every photo is a distinct crop of a real
kitchenware photo (the first class from one half of the package's photos, the second from the
other), so no embedding is shared between sessions. Everyone starts at the same moment.

Pass: 0 errors (exceptions shown, a class that did not get its samples, no "Taught" message, the
Predict page not on the taught model) and peak RSS of the server's process tree <= 2 GB. Printed:
the RSS before the class (model loaded by the teacher's tab), its peak, what it is once everyone
has taught with every tab still open (their samples, embeddings and taught models held), and the
time of each step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.appserver import RssSampler, streamlit_server  # noqa: E402
from bench.load_test import RSS_BUDGET, SessionLog, check, find_page, step_table, unique_photos  # noqa: E402
from bench.wsclient import ClientError, StreamlitSession, own_connections  # noqa: E402

CLASSES = ("cup", "plate")  # names only: what matters here is memory and time, not what is taught


async def student(session: StreamlitSession, index: int, photos: dict[str, list[tuple[str, bytes]]],
                  teach_page: str, start_gate: asyncio.Event) -> SessionLog:
    """One student's lesson; the tab stays open (the caller closes it once everyone is done)."""
    log = SessionLog(index)
    await start_gate.wait()
    try:
        await session.connect()
        check(await session.rerun(), "open", log, need=("plotly_chart",))
        check(await session.rerun(page=teach_page), "open teach", log)
        for name in photos:
            session.set_string("teach_name", name)
            session.click("teach_add_class")
            check(await session.rerun(), "add class", log)
        for name, files in photos.items():
            session.set_string("teach_target", name)
            t0 = time.perf_counter()
            await session.upload_files("teach_upload", files)
            result = await session.rerun()
            result.seconds = time.perf_counter() - t0  # the upload is part of what the student waits for
            check(result, "upload samples", log)
            wanted = f"**{name}** — {len(files)} of at most"
            if not any(wanted in t for t in result.texts("markdown")):
                log.errors.append(f"upload samples: '{wanted}' not shown")
        session.click("teach_train")
        result = await session.rerun()
        check(result, "teach", log, need=("plotly_chart",))
        if not any("Taught" in t for t in result.texts("alert")):
            log.errors.append(f"teach: no 'Taught' message: {result.texts('alert')}")
        session.set_string("model_source", "Taught: " + " / ".join(photos))
        result = await session.rerun(page="")
        check(result, "predict (taught)", log, need=("plotly_chart",))
        if not any("Weights:** Taught:" in t for t in result.texts("markdown")):
            log.errors.append("predict (taught): the sidebar does not say the taught model is in use")
    except (ClientError, OSError, asyncio.TimeoutError) as exc:
        log.errors.append(f"{type(exc).__name__}: {exc}")
    return log


async def settled(rss: RssSampler, window: float = 2.0, timeout: float = 60.0) -> int:
    """The server's RSS once it has stopped moving (the fused copy the teacher's first prediction
    prepares in the background is built), so what the class adds is not mixed with it."""
    n = int(window / rss.interval)
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        await asyncio.sleep(window / 2)
        last = rss.samples[-n:]
        if len(last) == n and max(last) - min(last) < 8 * 2**20:
            break
    return rss.samples[-1]


async def run_class(url: str, n: int, per_class: int, rss: RssSampler) -> tuple[list[SessionLog], dict]:
    own_connections(n)
    teacher = StreamlitSession(url)  # the teacher's tab: loads the model, learns the page list
    await teacher.connect()
    t0 = time.perf_counter()
    await teacher.rerun()
    info = {"first_run_s": time.perf_counter() - t0}
    teach_page = find_page(dict(teacher.pages), ("teach",))
    await teacher.close()
    if teach_page is None:
        raise SystemExit("the app has no Teach page")

    photos = unique_photos(n * len(CLASSES) * per_class)
    half = len(photos) // len(CLASSES)
    gate = asyncio.Event()
    sessions = [StreamlitSession(url) for _ in range(n)]
    tasks = []
    for i, session in enumerate(sessions):
        mine = {name: photos[k * half + i * per_class:k * half + (i + 1) * per_class]
                for k, name in enumerate(CLASSES)}
        tasks.append(asyncio.create_task(student(session, i, mine, teach_page, gate)))
    info["start_rss"] = await settled(rss)
    t0 = time.perf_counter()
    gate.set()
    try:
        logs = await asyncio.gather(*tasks)
        info["class_s"] = time.perf_counter() - t0
        await asyncio.sleep(1.0)
        info["held_rss"] = rss.samples[-1]  # every session still open, holding its samples and taught model
    finally:
        for session in sessions:
            await session.close()
    return logs, info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--per-class", type=int, default=10, help="photos uploaded to each of the two classes")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    if args.json:
        sys.stdout = open(os.devnull, "w")

    from bench.common import machine

    print(f"machine: {machine()}; load average before: {os.getloadavg()[0]:.1f}")
    with streamlit_server() as srv, RssSampler(srv.proc.pid) as rss:
        logs, info = asyncio.run(run_class(srv.url, args.sessions, args.per_class, rss))
    start, held = info["start_rss"], info["held_rss"]
    errors = [f"session {log.index}: {e}" for log in logs for e in log.errors]
    print(f"{args.sessions} students, {len(CLASSES)} classes x {args.per_class} photos each, all at once; "
          f"load average after: {os.getloadavg()[0]:.1f}")
    steps = list(max(logs, key=lambda log: len(log.steps)).steps)
    summary = step_table(logs, steps, width=18)
    print(f"whole class done in {info['class_s']:.1f} s")
    gb = 2**30
    print(f"server RSS (process tree): {start / gb:.2f} GB before the class (model loaded, one page shown), "
          f"peak {rss.peak / gb:.2f} GB (budget {RSS_BUDGET / gb:.0f} GB: "
          f"{'holds' if rss.peak <= RSS_BUDGET else 'MISSED'}), {held / gb:.2f} GB once all had taught "
          f"with every tab still open (RSS moves by tens of MB as the allocator keeps or returns memory: "
          f"read the peak, not the difference)")
    print(f"errors: {len(errors)}")
    for e in errors[:20]:
        print("  " + e)
    ok = not errors and rss.peak <= RSS_BUDGET
    report = {"sessions": args.sessions, "per_class": args.per_class, "errors": len(errors),
              "start_rss_gb": start / gb, "peak_rss_gb": rss.peak / gb, "held_rss_gb": held / gb,
              "wall_s": info["class_s"], "steps": summary, "ok": ok}
    print(json.dumps(report), file=sys.__stdout__ if args.json else sys.stdout)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
