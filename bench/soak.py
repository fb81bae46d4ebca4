"""Soak: one session uploads 200 different photos in a row; the server must not grow.

    python bench/soak.py                     # 200 uploads, warm-up 70
    python bench/soak.py --uploads 400

Driven against a real `streamlit run app.py` with the headless websocket client of the load test
(bench/wsclient.py), not AppTest: a leak in the server's upload manager, media store or caches
only shows in the real server process. Each upload is a distinct crop of a real photo, so every
one is a cache miss; the client deletes the file it replaced, as the browser does.

Pass: RSS of the server's process tree grows < 10% from the end of the warm-up to the end. The
warm-up (70 uploads) runs about as far as the largest stores this path fills (xviz/ui/cache.py:
decoded photos 128 MB, ~60 of these crops; features 16 MB, 80 at 150 px; model inputs 16 MB, 60):
growth until then is the stores filling up to their bounds, by design. Each RSS figure is a median
of 10 consecutive post-upload samples, so one allocator hiccup doesn't decide the result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.appserver import rss_bytes, streamlit_server, wait_idle  # noqa: E402
from bench.load_test import unique_photos  # noqa: E402
from bench.wsclient import StreamlitSession  # noqa: E402

GROWTH_BUDGET = 0.10
WINDOW = 10


async def soak(url: str, pid: int, uploads: int) -> tuple[list[int], list[float], list[str]]:
    photos = unique_photos(uploads, seed=1)
    session = StreamlitSession(url)
    rss, seconds, errors = [], [], []
    await session.connect()
    try:
        await session.rerun()
        # the server's one-off work after its first page (bench/load_test.py) is not the uploads' growth
        await asyncio.to_thread(wait_idle, pid)
        session.set_string("image_source", "Upload")
        await session.rerun()
        for i, (name, data) in enumerate(photos):
            t0 = time.perf_counter()
            await session.upload("image_uploader", name, data)
            result = await session.rerun()
            seconds.append(time.perf_counter() - t0)
            captions = [img.caption for kind, el in result.elements if kind == "imgs" for img in el.imgs]
            if result.exceptions or not result.count("plotly_chart") or not any(name in c for c in captions):
                errors.append(f"upload {i} ({name}): exceptions {result.exceptions}, "
                              f"{result.count('plotly_chart')} charts, captions {captions}")
            rss.append(rss_bytes(pid))
            if (i + 1) % 50 == 0:
                print(f"  {i + 1} uploads, server RSS {rss[-1] / 2**20:.0f} MiB", flush=True)
    finally:
        await session.close()
    return rss, seconds, errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=70)
    args = parser.parse_args(argv)
    if args.uploads < args.warmup + WINDOW:
        parser.error(f"--uploads must be at least --warmup + {WINDOW}")

    from bench.common import machine

    print(f"machine: {machine()}")
    with streamlit_server() as srv:
        start_rss = rss_bytes(srv.proc.pid)
        rss, seconds, errors = asyncio.run(soak(srv.url, srv.proc.pid, args.uploads))
    half = WINDOW // 2
    after_warmup = statistics.median(rss[args.warmup - half: args.warmup + half])
    end = statistics.median(rss[-WINDOW:])
    growth = end / after_warmup - 1
    ok = growth < GROWTH_BUDGET and not errors
    print(f"{args.uploads} sequential uploads in one session (websocket client, real server)")
    print(f"server RSS: {start_rss / 2**20:.0f} MiB idle, {rss[0] / 2**20:.0f} MiB after the first upload, "
          f"{after_warmup / 2**20:.0f} MiB after {args.warmup} (warm-up), {end / 2**20:.0f} MiB at the end, "
          f"peak {max(rss) / 2**20:.0f} MiB")
    print(f"growth after warm-up: {growth:+.1%} (budget < {GROWTH_BUDGET:.0%}): {'OK' if growth < GROWTH_BUDGET else 'TOO MUCH'}")
    print(f"upload + predict: median {statistics.median(seconds):.2f} s, mean {statistics.mean(seconds):.2f} s, "
          f"max {max(seconds):.2f} s; errors: {len(errors)}")
    for e in errors[:10]:
        print("  " + e)
    print(json.dumps({"uploads": args.uploads, "warmup": args.warmup, "rss_after_warmup_mib": after_warmup / 2**20,
                      "rss_end_mib": end / 2**20, "growth": growth, "errors": len(errors),
                      "median_s": statistics.median(seconds), "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
