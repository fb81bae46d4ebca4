"""Crafted uploads (issue 18): every decompression bomb and lying file is refused with a typed error,
within 2 s and 150 MB of peak RSS growth, measured in a fresh subprocess; real checkpoints still load
(tests/test_weights.py loads ~90 MB files in the timm, Keras 2 and Keras 3 formats).

The files come from tests/crafted_weights.py, built in memory in milliseconds; each claims 2 GiB
(or a pickle of 128-512 MB of lists) and is 28 bytes to 8 MB on disk.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import h5py
import pytest
import torch

import xviz
from crafted_weights import (GIB2, corpus, deflated_zeros, torch_legacy_pickle_of_lists, torch_zip_pickle_of_lists,
                             write)
from xviz.budget import MAX_INFLATION, MAX_LOAD_BYTES, ByteBudget, check_inflation
from xviz.errors import LabelsError, WeightsError

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
CASES = {case.name: case for case in corpus()}
REFUSE_WITHIN_S = 2.0  # the budgets
RSS_GROWTH_BYTES = 150 * 10**6


@pytest.fixture(scope="module")
def refusals(tmp_path_factory, kitchenware_dir) -> dict[str, dict]:
    """Every crafted file loaded in one fresh process: {name: error, message, seconds, rss_growth}."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak RSS is measured through Linux's /proc/self/clear_refs, which this system lacks")
    root = tmp_path_factory.mktemp("crafted")
    write(root, xviz.weights.kitchenware_path())  # labels cases sit beside the real demo model
    done = subprocess.run([sys.executable, str(TESTS / "crafted_weights.py"), str(root)], capture_output=True,
                          text=True, timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {row["name"]: row for row in rows}


@pytest.mark.parametrize("name", list(CASES))
def test_crafted_file_is_refused_fast_without_memory(refusals, name):
    case, row = CASES[name], refusals[name]
    assert row["error"] == case.error, row
    assert case.says in row["message"], row["message"]
    assert row["seconds"] <= REFUSE_WITHIN_S, row
    assert row["rss_growth"] <= RSS_GROWTH_BYTES, f"{row['rss_growth'] / 1e6:.0f} MB peak RSS growth"
    # a sentence for a person: no exception names or library internals
    for word in ("OSError", "RecursionError", "KeyError", "Unable to", "h5py", "Traceback"):
        assert word not in row["message"], row["message"]


def test_a_real_checkpoint_still_loads_after_them(refusals):
    """The demo model's 86 MB .keras, in the same process after every refusal."""
    row = refusals["real"]
    assert row["error"] is None, row
    assert row["size"] > 80e6


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.data])
def test_crafted_file_in_process(tmp_path, name):
    """The same refusal without a subprocess, through xviz.load_model, as the sidebar calls it."""
    case = CASES[name]
    path = tmp_path / case.filename
    path.write_bytes(case.data)
    with pytest.raises(WeightsError, match=case.says):
        xviz.load_model(path)


def test_nested_labels_are_a_labels_error(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_bytes(CASES["labels_nested_100000"].labels[1])
    with pytest.raises(LabelsError, match="nested too deeply"):
        xviz.loaded.read_labels(labels)
    with pytest.raises(LabelsError, match="nested too deeply"):
        xviz.loaded.parse_labels(labels.read_bytes(), is_json=True)


# -- controls: the crafted files really are what they claim ---------------------------------------

def _first_mib_of_member(data: bytes, member_suffix: str) -> tuple[int, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(member_suffix))
        with z.open(info) as f:
            return info.file_size, f.read(2**20)


@pytest.mark.parametrize("name, member", [("keras3_zip_bomb", "model.weights.h5"),
                                          ("torch_deflated_record", "data/0")])
def test_zip_bombs_are_live(name, member):
    declared, head = _first_mib_of_member(CASES[name].data, member)
    assert declared == GIB2 and head == bytes(2**20)  # a real deflate stream of zeros
    assert len(CASES[name].data) < 2.2e6


@pytest.mark.parametrize("name", ["keras2_gzip_dataset", "keras2_unallocated_dataset"])
def test_hdf5_bombs_are_live(name):
    with h5py.File(io.BytesIO(CASES[name].data), "r") as f:
        ds = f["predictions/predictions/kernel:0"]
        assert ds.nbytes == GIB2 and ds.id.get_storage_size() < ds.nbytes / 1000
        assert not ds[:4].any()  # reading works: the whole array would be 2 GiB of zeros


@pytest.mark.parametrize("build", [torch_zip_pickle_of_lists, torch_legacy_pickle_of_lists])
def test_pickles_of_lists_are_accepted_by_weights_only(tmp_path, build):
    """Nothing in them runs, so weights_only unpickles them: only their size makes them bombs."""
    path = tmp_path / "small.pth"
    path.write_bytes(build(1000))
    loaded = torch.load(path, weights_only=True)
    assert loaded == [[]] * 1000


def test_deflated_zeros_stream_is_exact():
    assert zlib.decompress(deflated_zeros(4 * 2**20), -15) == bytes(4 * 2**20)


# -- the budget -----------------------------------------------------------------------------------

def test_one_budget_adds_up_small_claims():
    budget = ByteBudget("w.safetensors")
    for _ in range(255):
        budget.charge(2**20, "a tensor")
    budget.charge(2**20, "the last tensor that fits")
    assert budget.used == MAX_LOAD_BYTES
    with pytest.raises(WeightsError, match="more than any Xception needs"):
        budget.charge(1, "one byte more")


def test_many_small_lies_add_up_across_a_file(tmp_path):
    """A safetensors header of 4,000 tensors of 80 MB each: each alone would fit, together they don't."""
    header = {f"t{i}": {"dtype": "F32", "shape": [20_000_000], "data_offsets": [0, 80_000_000]}
              for i in range(4000)}
    text = json.dumps(header).encode()
    path = tmp_path / "many.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(64))
    with pytest.raises(WeightsError, match="more than any Xception needs"):
        xviz.load_model(path)


def test_inflation_limit():
    check_inflation("w.keras", "member", 1_000_000, MAX_INFLATION * 1_000_000)  # real weights: fine
    check_inflation("w.keras", "member", 1, 60_000)  # tiny members: fine
    with pytest.raises(WeightsError, match="decompression bomb"):
        check_inflation("w.keras", "member", 1_000_000, MAX_INFLATION * 1_000_000 + 1)


def test_a_head_too_large_is_refused_before_it_is_built():
    from xviz.model import HeadLayer, XceptionConfig
    from xviz.weights import Checkpoint, build
    config = XceptionConfig(num_classes=10**7, head=(HeadLayer("dense", "predictions", 10**7),))
    with pytest.raises(WeightsError, match="head has"):
        build(Checkpoint({}, config, "xviz"))  # Linear(2048, 10**7) would allocate 82 GB


def test_a_stride_zero_view_claiming_gigabytes_is_refused(tmp_path):
    path = tmp_path / "view.pth"
    torch.save({"conv1.weight": torch.zeros(1).expand(2**30)}, path)  # 4 bytes stored, 4 GiB claimed
    with pytest.raises(WeightsError, match="claim"):
        xviz.load_model(path)
