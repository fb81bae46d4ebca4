"""Teaching new classes (issue 13): embedding cost, training time, session memory, a class at once.

Budgets: embedding a sample <= 1.1x a forward of the same size (interleaved pairs, one run);
training the head <= 1 s for 10 classes x 30 samples on this machine's cores; <= 20 MB of session
memory for 300 samples (stored JPEGs, thumbnails and their embeddings); thirty students teaching at
once keep the server under 2 GB (bench/load_teach.py against a fresh server, a few minutes).

The 300 samples are real: random crops of the demo package's photos and xviz/data/examples, ten
photos as ten "classes" of thirty crops each, embedded by the demo backbone at its 150 px.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import xviz
from bench.common import bench_model, json_report, median_seconds, row
from xviz import teaching as T
from xviz import weights as W

ROOT = Path(__file__).resolve().parent.parent
CLASSES, PER_CLASS = 10, 30


def photos() -> list[Path]:
    found = sorted((ROOT / "xviz" / "data" / "examples").glob("*.jpg"))
    kdir = W.kitchenware_dir()
    if kdir is not None:
        found += sorted((kdir / "datasets" / "kitchenware-data" / "images").glob("*.jpg"))
    return found[:CLASSES]


def random_crops(img, n: int, rng: np.random.Generator) -> list:
    w, h = img.size
    out = []
    for _ in range(n):
        f = rng.uniform(0.5, 0.95)
        cw, ch = int(w * f), int(h * f)
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out.append(img.crop((left, top, left + cw, top + ch)))
    return out


def rows(pairs: int = 11) -> list[dict]:
    model = bench_model(150)
    paths = photos()
    if len(paths) < CLASSES:
        return [row("teach: needs 10 photos (install the demo package)", float("nan"), "")]
    img = xviz.load_image(paths[0].read_bytes())
    x = model.preprocess(img)
    for _ in range(2):
        model.embed(img), model.logits(model.preprocess(img))
    model.predictor.prepare(x.shape, wait=True)  # both run the fused copy from here on, as in the app
    t_forward, t_embed = [], []
    for _ in range(pairs):  # interleaved: the same drift hits both sides of the ratio
        t_forward.append(median_seconds(lambda: model.logits(model.preprocess(img)), repeat=1, warmup=0))
        t_embed.append(median_seconds(lambda: model.embed(img), repeat=1, warmup=0))
    ratio = statistics.median(e / f for e, f in zip(t_embed, t_forward))

    rng = np.random.default_rng(0)
    samples, labels = [], []
    for k, path in enumerate(paths):
        for crop in random_crops(xviz.load_image(path.read_bytes()), PER_CLASS, rng):
            samples.append(T.make_sample(crop))
            labels.append(k)
    feats = torch.stack([model.embed(s.image()) for s in samples])
    y = torch.tensor(labels)
    memory = sum(s.nbytes for s in samples) + feats.numel() * 4

    fit = median_seconds(lambda: T.fit_head(feats, y, CLASSES), repeat=5, warmup=1)
    start = time.perf_counter()
    ev = T.evaluate(feats, y, [p.stem for p in paths])
    evaluate = time.perf_counter() - start
    del x
    return [
        row("teach: embed 150px / forward 150px", ratio, "x", budget=1.1, note=f"median of {pairs} paired runs"),
        row("teach: embed one sample 150px", statistics.median(t_embed) * 1e3, "ms"),
        row("teach: train the head, 10 classes x 30", fit, "s", budget=1.0, note=f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY "
            f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, load {os.getloadavg()[0]:.1f}"),
        row(f"teach: {ev.method}, 300 samples", evaluate, "s",
            note=f"accuracy {ev.accuracy:.0%}, nearest class mean {ev.baseline_accuracy:.0%}"),
        row("teach: session memory, 300 samples", memory / 1e6, "MB", budget=20.0,
            note="stored JPEGs + thumbnails + float32 embeddings"),
        *class_rows(),
    ]


def class_rows(sessions: int = 30) -> list[dict]:
    """bench/load_teach.py's class as rows: peak RSS of the server against the 2 GB budget."""
    r = json_report("load_teach.py", "--sessions", str(sessions))
    note = f"{r['per_class']} photos x 2 classes each; class done in {r['wall_s']:.0f} s"
    return [row(f"teach: {sessions} students at once, errors", r["errors"], "", budget=0),
            row(f"teach: {sessions} students at once, peak server RSS", r["peak_rss_gb"], "GB", budget=2.0, note=note),
            row(f"teach: {sessions} students at once, RSS held once all had taught", r["held_rss_gb"], "GB",
                note=f"{r['start_rss_gb']:.2f} GB before the class, every tab still open")]


if __name__ == "__main__":
    from bench.run import print_table
    print_table(rows())
