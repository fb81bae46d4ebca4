"""Look before reading: what an uploaded weights file may cost, checked before a byte is inflated.

Anyone in a class can upload a weights file, and one server holds every student's session, so a
file's own claims (zip members' sizes, HDF5 shapes, safetensors offsets, torch records) are checked
against what an Xception can hold before anything is read, inflated or decoded. Every reader of one
load charges the same :class:`ByteBudget`, so many small lies can't add up to a large one.

Limits (why these numbers):

* ``MAX_LOAD_BYTES`` (256 MiB): the arrays of the largest checkpoint xviz accepts. The backbone is
  83.4 MB in float32 (20.86 M parameters); the published ImageNet file is 91.7 MB. 256 MiB leaves
  room for a head as large as ImageNet-21k's (2048 x 21,843 + bias = 179 MB), or for an
  ImageNet-sized ``.keras`` whose member had to be inflated and then decoded (2 x 92 MB).
* ``MAX_INFLATION`` (4x): trained weights barely compress (the demo model's ``model.weights.h5``
  deflates to 0.92 of its size); a member or dataset that claims to grow more than 4x is a bomb,
  whatever its size.
* ``MAX_METADATA_BYTES`` (2 MiB): a Keras config or a safetensors header. Xception's ``config.json``
  is 123 KB. JSON becomes Python objects up to ~21x its size (``[[],[],...]``: a 56-byte list per
  3 bytes), so at most ~45 MB.
* ``MAX_PICKLE_BYTES`` (1 MiB): the pickle of a torch file. A full Xception state dict's is 46 KB
  (zip format) or 56 KB (torch < 1.6). ``weights_only`` lets a pickle build lists, at up to 64 bytes
  of memory per pickle byte (``EMPTY_LIST`` is one byte), so at most ~64 MB.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from pathlib import Path

from .errors import WeightsError

MAX_LOAD_BYTES = 256 * 2**20
MAX_INFLATION = 4
MAX_METADATA_BYTES = 2 * 2**20
MAX_PICKLE_BYTES = 2**20
MAX_ENTRIES = 4096  # zip members, tensors, HDF5 layers: Xception has 276 state-dict keys


def mb(n: int) -> str:
    """Bytes as a user reads them: 8 KB, 91.7 MB, 2.1 GB."""
    if n < 1e6:
        return f"{n / 1e3:,.0f} KB"
    return f"{n / 1e6:,.1f} MB" if n < 1e9 else f"{n / 1e9:,.1f} GB"


class ByteBudget:
    """Bytes one load may inflate or decode, charged before each read.

    Example:
        >>> budget = ByteBudget("weights.keras")
        >>> budget.charge(86_000_000, "the arrays of model.weights.h5")  # fine
        >>> budget.charge(2**31, "dataset kernel")  # raises WeightsError
    """

    def __init__(self, name: str, limit: int = MAX_LOAD_BYTES):
        self.name, self.limit, self.used = name, limit, 0

    def charge(self, nbytes: int, what: str) -> None:
        if nbytes < 0:
            raise WeightsError(f"{self.name} is damaged: {what} has a negative size.")
        if self.used + nbytes > self.limit:
            raise WeightsError(
                f"{self.name} is refused: {what} would take {mb(self.used + nbytes)} of memory in all, more "
                f"than any Xception needs ({mb(self.limit)} at most, with the largest head xviz accepts). "
                "It is not an Xception checkpoint, or it was built to exhaust the server's memory.")
        self.used += nbytes


def check_inflation(name: str, what: str, stored: int, inflated: int) -> None:
    """Refuse ``what`` if it claims to grow from ``stored`` bytes to more than MAX_INFLATION times that."""
    if inflated > MAX_INFLATION * stored and inflated > 64 * 2**10:  # tiny members: any ratio is harmless
        grows = (f"from {mb(stored)} to {mb(inflated)}, {inflated / stored:,.0f} times its size" if stored
                 else f"to {mb(inflated)} from nothing stored")
        raise WeightsError(
            f"{name} is refused: {what} would inflate {grows}. Real weights barely compress, so this is a "
            "decompression bomb or a damaged file. Upload the file as your training code saved it.")


def loads_json(text: bytes | str, name: str, what: str, limit: int = MAX_METADATA_BYTES):
    """``json.loads`` of untrusted text: size-capped, and nesting too deep for Python is a WeightsError."""
    if len(text) > limit:
        raise WeightsError(f"{name} is refused: its {what} is {mb(len(text))}, far more than an Xception's "
                           f"(at most {mb(limit)}).")
    try:
        return json.loads(text)
    except RecursionError:
        raise WeightsError(f"{name} is refused: its {what} is nested too deeply to be a model description.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{name} is damaged: its {what} is not valid JSON ({type(exc).__name__}).") from None


# -- zip archives (.keras, torch.save) -------------------------------------------------------------

def open_zip(path: Path, name: str, kind: str) -> zipfile.ZipFile:
    """A zip whose central directory is sane: a bounded number of members, each inside the file."""
    try:
        zf = zipfile.ZipFile(path)
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error):
        raise WeightsError(f"{name} is not a {kind} file: it is not a readable zip archive.") from None
    size = os.path.getsize(path)
    if len(infos) > MAX_ENTRIES:
        zf.close()
        raise WeightsError(f"{name} is refused: it holds {len(infos):,} files; an Xception {kind} file holds a "
                           "few hundred at most.")
    for info in infos:
        if info.header_offset + info.compress_size > size:
            zf.close()
            raise WeightsError(f"{name} is damaged: {info.filename} claims to end past the end of the file.")
    return zf


def read_member(zf: zipfile.ZipFile, member: str, name: str, budget: ByteBudget,
                limit: int = MAX_LOAD_BYTES) -> bytes:
    """A member's bytes, after checking its declared size and compression ratio (and charging them)."""
    info = zf.getinfo(member)
    if info.file_size > limit:
        raise WeightsError(f"{name} is refused: its {member} is {mb(info.file_size)}, far more than an "
                           f"Xception's (at most {mb(limit)}).")
    check_inflation(name, member, info.compress_size, info.file_size)
    budget.charge(info.file_size, member)
    with zf.open(info) as f:
        data = f.read(info.file_size + 1)  # one byte more: a member longer than it declared is a liar
    if len(data) != info.file_size:
        raise WeightsError(f"{name} is damaged: {member} is not as long as the archive says.")
    return data


class StoredMember(io.RawIOBase):
    """A read-only, seekable window onto an uncompressed (stored) zip member, so h5py can read the
    arrays it needs from the file itself instead of from an 86 MB copy in memory.

    zipfile's own member file seeks backwards by re-reading from the start (Python 3.11), which
    HDF5's many small seeks would turn quadratic.
    """

    def __init__(self, path: Path, info: zipfile.ZipInfo):
        super().__init__()
        self._f = open(path, "rb")
        self._f.seek(info.header_offset)
        header = self._f.read(zipfile.sizeFileHeader)
        if len(header) != zipfile.sizeFileHeader or header[:4] != zipfile.stringFileHeader:
            self._f.close()
            raise WeightsError(f"{path.name} is damaged: {info.filename} has no local header.")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        self._start = info.header_offset + zipfile.sizeFileHeader + name_len + extra_len
        self._size = info.file_size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(buffer)[:n])
        self._pos += got
        return got

    def close(self) -> None:
        self._f.close()
        super().close()
