"""Uploading your own weights through the sidebar (AppTest): nothing in the file runs, nothing is
written where the upload's name points, and a file that doesn't fit Xception gets a clear error.

test_weights.py checks the loaders themselves; this file goes through the UI path a student takes:
model "Your own weights file…", then the weights uploader.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import pickletools
import re
import shlex
import uuid
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes
from streamlit.testing.v1 import AppTest

import xviz
from helpers import start_app, uploader
from xviz.ui import uploads
from xviz.weights import config_to_json


class ShellPayload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


class ExecPayload:
    """Unpickling this runs Python that writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('ran')",)


def torch_pickle(payload) -> bytes:
    """A torch.save zip file whose 'state dict' carries the payload, as a booby-trapped checkpoint would."""
    buf = io.BytesIO()
    torch.save({"state_dict": {"entry_flow.block1.conv1.weight": payload}}, buf)
    return buf.getvalue()


def raw_pickle(payload) -> bytes:
    return pickle.dumps({"model": payload}, protocol=2)


MALICIOUS = {
    "torch_zip_os_system.pth": lambda marker: torch_pickle(ShellPayload(marker)),
    "torch_zip_exec.pt": lambda marker: torch_pickle(ExecPayload(marker)),
    "raw_pickle_os_system.bin": lambda marker: raw_pickle(ShellPayload(marker)),
}


@pytest.fixture
def app(tmp_path, monkeypatch):
    """The app with "Your own weights file…" already chosen, run from an empty working directory and
    with an empty temp root, so anything written ends up somewhere this test can see."""
    work = tmp_path / "cwd" / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp_root))
    return start_app(model_source="upload")


def upload_weights(at: AppTest, name: str, data: bytes) -> AppTest:
    uploader(at, uploads.WEIGHTS).set_value((name, data, "application/octet-stream"))
    return at.run()


def sidebar_errors(at: AppTest) -> list[str]:
    return [e.value for e in at.sidebar.error]


def weights_line(at: AppTest) -> str:
    return next(m.value for m in at.sidebar.markdown if m.value.startswith("**Weights:**"))


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def state_dict(kitchenware_state_dict) -> dict[str, torch.Tensor]:
    return kitchenware_state_dict


@pytest.fixture(scope="module")
def head_config(kitchenware) -> str:
    """The demo model's head (two dense layers) as save_weights records it; without it a dense head
    is ambiguous and refused before any shape is checked."""
    return config_to_json(kitchenware.net.config)


@pytest.mark.parametrize("name", list(MALICIOUS))
def test_payloads_are_live(tmp_path, name):
    """Control: each payload really calls code on unpickling (read from its opcodes, never run), so
    the UI test below would notice if the app ever unpickled one."""
    marker = tmp_path / "control"
    data = MALICIOUS[name](marker)
    if data[:2] == b"PK":  # torch.save's zip: the pickle is its data.pkl
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    assert ("REDUCE", None) in ops
    assert any(isinstance(arg, str) and str(marker) in arg for _, arg in ops)


@pytest.mark.parametrize("name", list(MALICIOUS))
def test_malicious_pickle_is_refused_without_running(app, tmp_path, name):
    marker = tmp_path / "pwned"
    image_before = app.session_state["image_bytes"]
    at = upload_weights(app, name, MALICIOUS[name](marker))
    assert not at.exception, at.exception
    assert not marker.exists(), "the upload's pickle payload ran"
    errors = sidebar_errors(at)
    assert len(errors) == 1 and "can't be loaded safely" in errors[0] and "never code" in errors[0], errors
    assert name not in errors[0]  # the message names the problem, not a server path or the upload
    assert any("Choose a model" in i.value for i in at.info)  # pages wait for a usable model
    assert at.session_state["image_bytes"] == image_before  # the image is untouched
    assert not files_under(tmp_path / "tmp"), "the temporary weights file was left behind"


def test_wrong_shapes_are_named(app, state_dict, head_config):
    bad = dict(state_dict)
    bad["entry_flow.block1.conv1.weight"] = torch.zeros(32, 3, 5, 5)
    data = safetensors_bytes(bad, metadata={"xviz_config": head_config})
    at = upload_weights(app, "finetuned.safetensors", data)
    assert not at.exception, at.exception
    errors = sidebar_errors(at)
    assert len(errors) == 1, errors
    assert "don't fit Xception" in errors[0] and "1 wrong shapes" in errors[0], errors
    assert "entry_flow.block1.conv1.weight (32, 3, 5, 5) (expected (32, 3, 3, 3))" in errors[0], errors


def test_missing_keys_are_named(app, state_dict, head_config):
    partial = {k: v for k, v in state_dict.items() if not k.startswith("exit_flow.block14.")}
    buf = io.BytesIO()
    torch.save({"state_dict": partial, "xviz_config": head_config}, buf)
    at = upload_weights(app, "half-saved.pth", buf.getvalue())
    assert not at.exception, at.exception
    errors = sidebar_errors(at)
    assert len(errors) == 1 and "missing" in errors[0] and "exit_flow.block14." in errors[0], errors


@pytest.mark.parametrize("name", ["../../etc/evil.safetensors", "/etc/xviz-evil.safetensors",
                                  "..\\..\\Windows\\evil.safetensors"])
def test_upload_name_is_never_a_path(app, tmp_path, monkeypatch, state_dict, head_config, name):
    # unique bytes per case: the uploaded-model cache is keyed by content, and a cache hit writes nothing
    meta = {"xviz_config": head_config, "case": uuid.uuid4().hex}
    data = safetensors_bytes(state_dict, metadata=meta)
    loaded_from = []
    load_file = xviz.load_file

    def spy(path, *args, **kwargs):
        loaded_from.append(Path(path))
        return load_file(path, *args, **kwargs)

    monkeypatch.setattr(xviz, "load_file", spy)
    before = files_under(tmp_path)
    at = upload_weights(app, name, data)
    assert not at.exception, at.exception
    assert not sidebar_errors(at), sidebar_errors(at)
    assert any("sure this is" in m.value for m in at.markdown)  # the uploaded model predicts
    # it was read from a file xviz named itself, in a fresh temp dir, deleted afterwards
    assert len(loaded_from) == 1 and loaded_from[0].name == "weights.safetensors", loaded_from
    assert loaded_from[0].parent.parent == tmp_path / "tmp", loaded_from
    assert files_under(tmp_path) == before, "the upload left files behind or wrote where its name points"
    assert not Path("/etc/xviz-evil.safetensors").exists()
    shown = weights_line(at).split("Your weights: ", 1)[1].split(" (", 1)[0]
    # only the name's last component is shown, whichever separator the uploader's OS used
    assert shown == re.split(r"[\\/]", name)[-1] and not set(shown) & set("/\\"), shown


def test_crafted_uploads_are_refused_and_the_previous_model_stays(app, state_dict, head_config):
    """Issue 18 through the sidebar: a good upload, then each kind of crafted file (decompression
    bombs, lying headers, links to server files, nested labels). Each shows its message in the
    sidebar while the page keeps predicting with the good model; a fresh session notices nothing."""
    from crafted_weights import corpus

    good = safetensors_bytes(state_dict, metadata={"xviz_config": head_config})
    at = upload_weights(app, "good.safetensors", good)
    assert not at.exception and not sidebar_errors(at), sidebar_errors(at)
    assert "Your weights: good.safetensors" in weights_line(at)
    for case in corpus():
        if case.labels:  # the good weights again, with crafted labels beside them
            name, data = case.labels
            uploader(at, uploads.LABELS).set_value((name, data, "application/json"))
            at = upload_weights(at, "good.safetensors", good)
        else:  # refused and let go: the uploader is emptied, the good model stays in use
            at = upload_weights(at, case.filename, case.data)
        assert not at.exception, (case.name, at.exception)
        errors = sidebar_errors(at)
        assert len(errors) == 1 and case.says in errors[0], (case.name, errors)
        assert "The previous model is still in use." in errors[0], errors[0]
        assert "Your weights: good.safetensors" in weights_line(at), case.name  # still the good model
        assert any("sure this is" in m.value for m in at.markdown), case.name  # and it still predicts
        if case.labels:
            uploader(at, uploads.LABELS).set_value(None)
            at.run()
    other = start_app()  # another student's session, on the default model
    assert not sidebar_errors(other), sidebar_errors(other)
    assert any("sure this is" in m.value for m in other.markdown)
