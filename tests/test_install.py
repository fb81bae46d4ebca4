"""xviz installs like a Python package: a wheel built from the checkout, in a fresh virtual
environment, used from a folder outside the checkout (how: tests/wheel_env.py). The installed app
is started in a real browser by tests/e2e/test_installed_app.py."""

from __future__ import annotations

import zipfile
from pathlib import Path

from bench.browser import registered_pages

REPO = Path(__file__).resolve().parents[1]


def test_wheel_carries_the_package_data_and_the_app(installed_wheel):
    with zipfile.ZipFile(installed_wheel.wheel) as whl:
        names = set(whl.namelist())
        config = whl.read("xviz/_app/.streamlit/config.toml")
        entry_points = whl.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert {"xviz/py.typed", "xviz/data/imagenet_labels.txt", "xviz/_app/app.py"} <= names
    photos = {f"xviz/data/examples/{p.name}" for p in (REPO / "xviz" / "data" / "examples").glob("*.jpg")}
    assert photos and photos <= names, photos - names  # the app's example photos
    pages = {f"xviz/_app/{page.path}" for page in registered_pages(REPO)}
    assert pages and pages <= names, pages - names
    # the app's settings (upload limit, XSRF, usage statistics) are the checkout's file, not a copy of it
    assert config == (REPO / ".streamlit" / "config.toml").read_bytes()
    assert "xviz = xviz.__main__:main" in entry_points
    assert not [n for n in names if n.endswith(".pyc") or n.startswith(("tests/", "bench/"))]


def test_import_and_load_from_outside_the_checkout(installed_wheel):
    done = installed_wheel.run(str(installed_wheel.python), "-c",
                               "import sys, xviz; m = xviz.load_model('untrained'); "
                               "print(xviz.__file__); print(m.source); print('streamlit' in sys.modules); "
                               "from xviz.__main__ import app_script; print(app_script())")
    assert done.returncode == 0, done.stderr[-3000:]
    where, source, streamlit_imported, app = done.stdout.split("\n")[:4]
    assert Path(where).is_relative_to(installed_wheel.env), f"imported {where}, not the installed wheel"
    assert "untrained" in source.lower()
    assert streamlit_imported == "False"  # `import xviz` never imports Streamlit
    # `xviz app` runs the copy inside the installed package, with its config next to it
    assert Path(app).is_relative_to(installed_wheel.env), app
    assert (Path(app).parent / ".streamlit" / "config.toml").is_file()


def test_the_xviz_command_runs(installed_wheel):
    xviz = str(installed_wheel.scripts / "xviz")
    top = installed_wheel.run(xviz, "--help")
    assert top.returncode == 0, top.stderr[-3000:]
    assert all(cmd in top.stdout for cmd in ("app", "fetch", "status"))
    app = installed_wheel.run(xviz, "app", "--help")
    assert app.returncode == 0, app.stderr[-3000:]
    assert "streamlit run" in app.stdout
