"""A wheel built from the checkout and installed into a fresh virtual environment, as a user gets it.

Offline and fast on purpose: the wheel is built without build isolation (hatchling comes with the
``dev`` extra), and the new environment sees this test environment's packages through a ``.pth``
file instead of downloading them again. What that checks, and what it doesn't:

- the wheel itself (its files, its ``xviz`` command, the app folder it carries) is installed into
  the new environment's own site-packages and is what ``import xviz`` finds there, never the
  checkout: the tests run from a folder outside it and assert where ``xviz`` was imported from;
- the wheel's declared dependencies (core and ``app``) are resolved by pip with ``--no-index``, so
  a dependency the wheel forgot to declare, or declared with a version this environment doesn't
  satisfy, fails the install;
- not checked: downloading those dependencies from an index. The README's setup line does that,
  and CI runs it in a new virtual environment on a clean clone (.ci/run).

The ``.pth`` lists the site-packages of the running interpreter, whichever environment that is
(the README's ``.venv`` in CI): ``--system-site-packages`` would instead expose the *base*
interpreter's, which in a virtual environment is not where the dependencies are. Plain path lines
don't run the ``.pth`` files they point at, so an editable install of the checkout stays invisible.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Installed:
    wheel: Path
    env: Path  # the virtual environment
    python: Path  # its interpreter
    scripts: Path  # its bin/ (Scripts\ on Windows), where the `xviz` command is
    outside: Path  # an empty working directory outside the checkout

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a command of the environment from ``outside``, with no PYTHONPATH leaking the checkout."""
        env = {k: v for k, v in __import__("os").environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        return subprocess.run(args, cwd=self.outside, env=env, capture_output=True, text=True, timeout=timeout)


def _check(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def build_and_install(tmp: Path) -> Installed:
    dist = tmp / "dist"
    _check([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
            "--no-index", "--wheel-dir", str(dist), str(REPO)])
    wheels = sorted(dist.glob("xviz-*.whl"))
    assert len(wheels) == 1, wheels
    env = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    context = venv.EnvBuilder().ensure_directories(env)
    python, scripts = Path(context.env_exe), Path(context.bin_path)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    here = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(site) / "xviz_test_dependencies.pth").write_text("\n".join(here) + "\n")
    _check([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-index",
            f"xviz[app] @ {wheels[0].as_uri()}"])
    outside = tmp / "elsewhere"
    outside.mkdir()
    return Installed(wheels[0], env, python, scripts, outside)
