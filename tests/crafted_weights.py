"""Crafted weights and labels files, built in memory the way an attacker in the class would build them.

Importable by tests (``from crafted_weights import corpus``) and by bench/bench_crafted.py. Each file
is small (2 KB to 2.1 MB) and claims far more than it holds: 2 GiB inflated from a zip member, an
HDF5 dataset or a torch record; safetensors headers that lie; labels nested 100,000 lists deep;
and HDF5 links and storage that point at other files on the server.

Run as a script, it loads every file written by :func:`write` in a directory, one after the other
in this fresh process, and prints one JSON line per file: the exception raised, how long the
refusal took and the peak RSS growth while it ran (Linux: the peak is reset through
/proc/self/clear_refs before each load). tests/test_crafted_weights.py runs it in a subprocess so
the memory measured is the loader's alone.
"""

from __future__ import annotations

import gc
import io
import json
import pickletools
import re
import struct
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

GIB2 = 2**31  # what every bomb inflates to
CRC32_OF_2GIB_ZEROS = 0x4DBDF21C  # zlib.crc32(bytes(2**31)), computed once (2 s)


@dataclass(frozen=True)
class Crafted:
    name: str  # pytest id
    filename: str  # the upload's name (its extension picks the reader)
    data: bytes
    error: str  # the exception class the load must raise
    says: str  # a phrase the message must contain
    labels: tuple[str, bytes] | None = None  # (file name, bytes) loaded beside a valid weights file

    def __repr__(self) -> str:
        return f"Crafted({self.name!r}, {len(self.data):,} bytes)"


# -- building blocks ------------------------------------------------------------------------------

def deflated_zeros(n: int = GIB2) -> bytes:
    """A raw deflate stream of ``n`` zero bytes, built in milliseconds: after a full flush the
    compressor starts afresh, so every 1 MiB block compresses to the same 1,037 bytes."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = co.compress(bytes(2**20)) + co.flush(zlib.Z_FULL_FLUSH)
    assert n % 2**20 == 0
    return block * (n // 2**20) + co.flush()


def raw_zip(members: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip of (name, stored bytes, method, crc32, size once inflated) written by hand: zipfile
    would insist on compressing the 2 GiB itself."""
    out, central = io.BytesIO(), io.BytesIO()
    for name, data, method, crc, size in members:
        offset = out.tell()
        encoded = name.encode()
        out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(data), size,
                              len(encoded), 0) + encoded + data)
        central.write(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, len(data), size,
                                  len(encoded), 0, 0, 0, 0, 0, offset) + encoded)
    count, start = len(members), out.tell()
    out.write(central.getvalue())
    out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(central.getvalue()), start, 0))
    return out.getvalue()


def stored(name: str, data: bytes) -> tuple[str, bytes, int, int, int]:
    return name, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data)


def bomb(name: str) -> tuple[str, bytes, int, int, int]:
    return name, deflated_zeros(), zipfile.ZIP_DEFLATED, CRC32_OF_2GIB_ZEROS, GIB2


def h5_bytes(build) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        build(f)
    return buf.getvalue()


def keras2_dense(f: h5py.File, make_kernel) -> None:
    """A Keras 2 ``save_weights`` file whose one layer is a Dense called 'predictions'."""
    f.attrs["layer_names"] = np.array([b"predictions"])
    g = f.create_group("predictions")
    g.attrs["weight_names"] = np.array([b"predictions/kernel:0", b"predictions/bias:0"])
    make_kernel(g.create_group("predictions"))
    g["predictions"].create_dataset("bias:0", data=np.zeros(1000, np.float32))


# -- the corpus -----------------------------------------------------------------------------------

def _keras3_config() -> bytes:
    return json.dumps({"class_name": "Functional", "config": {"layers": [
        {"class_name": "Dense", "config": {"name": "predictions", "activation": "softmax"}}]}}).encode()


def keras3_zip_bomb() -> bytes:
    return raw_zip([stored("metadata.json", b'{"keras_version": "3.3.3"}'), stored("config.json", _keras3_config()),
                    bomb("model.weights.h5")])


def keras2_gzip_dataset() -> bytes:
    """One gzip-compressed (2048, 262144) float32 kernel (2 GiB of zeros): 512 chunks, each the same
    4 MiB of zeros gzip-compressed once and written directly, so building takes milliseconds."""
    rows = 2048 // 512
    chunk = zlib.compress(bytes(rows * 262144 * 4), 9)  # h5py's gzip filter is zlib's stream format

    def kernel(g):
        ds = g.create_dataset("kernel:0", shape=(2048, 262144), dtype=np.float32, chunks=(rows, 262144),
                              compression="gzip")
        for i in range(0, 2048, rows):
            ds.id.write_direct_chunk((i, 0), chunk)

    return h5_bytes(lambda f: keras2_dense(f, kernel))


def keras2_unallocated_dataset() -> bytes:
    """A 2 GiB dataset that was never written: HDF5 returns its fill value, and stores nothing."""
    return h5_bytes(lambda f: keras2_dense(f, lambda g: g.create_dataset(
        "kernel:0", shape=(2048, 262144), dtype=np.float32, chunks=(64, 262144))))


def keras2_external_storage() -> bytes:
    """A dataset whose bytes live in a file on the server, named inside the upload."""
    return h5_bytes(lambda f: keras2_dense(f, lambda g: g.create_dataset(
        "kernel:0", shape=(2048, 1000), dtype=np.float32, external=[("/etc/passwd", 0, h5py.h5f.UNLIMITED)])))


def keras2_external_link() -> bytes:
    """A layer group that is a link into another HDF5 file on the server."""
    def build(f):
        f.attrs["layer_names"] = np.array([b"predictions"])
        f["predictions"] = h5py.ExternalLink("/srv/other-users-upload.h5", "/predictions")
    return h5_bytes(build)


def torch_deflated_record() -> bytes:
    """torch.save's own zip with its one data record replaced by 2 GiB of deflated zeros."""
    buf = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(4)}, buf)
    members = []
    with zipfile.ZipFile(buf) as z:
        for info in z.infolist():
            members.append(bomb(info.filename) if re.fullmatch(r".*/data/0", info.filename)
                           else stored(info.filename, z.read(info)))
    return raw_zip(members)


def torch_zip_pickle_of_lists(n: int = 2 * 2**20) -> bytes:
    """torch.save's zip whose data.pkl is ``n`` one-byte EMPTY_LIST ops: weights_only allows lists,
    and each costs 64 bytes of memory (128 MB from 2 MB)."""
    pickle = b"\x80\x02](" + b"]" * n + b"e."
    buf = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(4)}, buf)
    with zipfile.ZipFile(buf) as z:
        return raw_zip([stored(i.filename, pickle if i.filename.endswith("data.pkl") else z.read(i))
                        for i in z.infolist()])


def _legacy_header() -> bytes:
    """The first three pickles of a torch < 1.6 file (magic number, protocol, system info)."""
    buf = io.BytesIO()
    torch.save({}, buf, _use_new_zipfile_serialization=False)
    f = io.BytesIO(buf.getvalue())
    for _ in range(3):
        for _ in pickletools.genops(f):
            pass
    return buf.getvalue()[:f.tell()]


def torch_legacy_pickle_of_lists(n: int = 8 * 2**20) -> bytes:
    """A torch < 1.6 file (the ImageNet file's format) whose state dict pickle is ``n`` EMPTY_LISTs:
    512 MB of lists from 8 MB."""
    return _legacy_header() + b"\x80\x02](" + b"]" * n + b"e." + b"\x80\x02]."


def torch_legacy_lying_storage() -> bytes:
    """A torch < 1.6 file whose one storage claims 2**29 floats (2 GiB) over 16 bytes of data."""
    n = 2**29
    buf = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(4)}, buf, _use_new_zipfile_serialization=False)
    data = bytearray(buf.getvalue())
    numel = data.index(b"cpu") + 5  # after 'cpu' and its BINPUT: BININT1 4, the storage's size
    assert data[numel:numel + 2] == b"K\x04"
    data[numel:numel + 2] = b"J" + struct.pack("<i", n)
    size = data.index(b"K\x00K\x04", numel)  # the tensor's offset 0 and size (4,)
    data[size:size + 4] = b"K\x00J" + struct.pack("<i", n)
    data[-24:-16] = struct.pack("<q", n)  # the storage's own size header, before its 16 bytes
    return bytes(data)


def safetensors_lying_offsets() -> bytes:
    """A header claiming a 2 GiB tensor over 16 bytes of data."""
    header = json.dumps({"fc.weight": {"dtype": "F32", "shape": [2**29], "data_offsets": [0, GIB2]}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(16)


def safetensors_lying_header_length() -> bytes:
    """An 8-byte header length of 1 TiB in front of a tiny header."""
    return struct.pack("<Q", 2**40) + b'{"__metadata__": {}}'


def nested_labels(depth: int = 100_000) -> bytes:
    return b"[" * depth + b"]" * depth


def corpus() -> list[Crafted]:
    return [
        Crafted("keras3_zip_bomb", "finetuned.keras", keras3_zip_bomb(), "WeightsError", "far more than an Xception"),
        Crafted("keras2_gzip_dataset", "weights.h5", keras2_gzip_dataset(), "WeightsError", "decompression bomb"),
        Crafted("keras2_unallocated_dataset", "weights.h5", keras2_unallocated_dataset(), "WeightsError",
                "decompression bomb"),
        Crafted("keras2_external_storage", "weights.h5", keras2_external_storage(), "WeightsError", "other files"),
        Crafted("keras2_external_link", "weights.h5", keras2_external_link(), "WeightsError", "link"),
        Crafted("torch_deflated_record", "finetuned.pth", torch_deflated_record(), "WeightsError",
                "torch.save never does"),
        Crafted("torch_zip_pickle_of_lists", "finetuned.pth", torch_zip_pickle_of_lists(), "WeightsError",
                "its pickle is"),
        Crafted("torch_legacy_pickle_of_lists", "finetuned.pth", torch_legacy_pickle_of_lists(), "WeightsError",
                "its pickle is"),
        Crafted("torch_legacy_lying_storage", "finetuned.pth", torch_legacy_lying_storage(), "WeightsError",
                "shorter than it claims"),
        Crafted("safetensors_lying_offsets", "finetuned.safetensors", safetensors_lying_offsets(), "WeightsError",
                "more than any Xception needs"),
        Crafted("safetensors_lying_header_length", "finetuned.safetensors", safetensors_lying_header_length(),
                "WeightsError", "header length"),
        Crafted("labels_nested_100000", "valid.safetensors", b"", "LabelsError", "nested too deeply",
                labels=("labels.json", nested_labels())),
    ]


# -- writing them, and loading them in a fresh process --------------------------------------------

def write(root: Path, valid_weights: Path) -> list[dict]:
    """Write the corpus under ``root`` (one folder per case); labels cases use ``valid_weights``,
    which is also loaded last, as case "real"."""
    manifest = []
    for case in corpus():
        folder = root / case.name
        folder.mkdir(parents=True)
        weights = valid_weights
        if case.data:
            weights = folder / case.filename
            weights.write_bytes(case.data)
        labels = None
        if case.labels:
            labels = folder / case.labels[0]
            labels.write_bytes(case.labels[1])
        manifest.append({"name": case.name, "weights": str(weights), "labels": str(labels) if labels else None,
                         "size": len(case.data) + len(case.labels[1] if case.labels else b"")})
    # last, the control: a real checkpoint loads in the same process, and what that costs
    manifest.append({"name": "real", "weights": str(valid_weights), "labels": None,
                     "size": valid_weights.stat().st_size})
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def _status(field: str) -> int:
    """VmRSS / VmHWM of this process in bytes."""
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := VmRSS


def main(root: str) -> None:
    import xviz

    manifest = json.loads((Path(root) / "manifest.json").read_text())
    for suffix in (".keras", ".h5", ".pth", ".safetensors"):  # warm-up: import every reader's modules
        junk = Path(root) / f"warm-up{suffix}"
        junk.write_bytes(b"\x00" * 64)
        try:
            xviz.load_model(junk)
        except xviz.XvizError:
            pass
    for case in manifest:
        gc.collect()
        _reset_peak()
        before = _status("VmRSS")
        start = time.perf_counter()
        try:
            xviz.load_model(case["weights"], labels=case["labels"])
            error, message = None, ""
        except Exception as exc:  # the test asserts the exact class
            error, message = type(exc).__name__, str(exc)
        seconds = time.perf_counter() - start
        growth = _status("VmHWM") - before
        print(json.dumps({"name": case["name"], "error": error, "message": message, "seconds": seconds,
                          "rss_growth": growth, "size": case["size"]}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
