"""Upload limits, and letting go of what was refused.

Streamlit keeps each uploaded file's bytes in the server's memory (``MemoryUploadedFileManager``) until
the browser DELETEs it, which it does only when the user clicks ×, or until the session ends. Four
students dropping a 300 MB video each used to cost the server 1.2 GB for the rest of the lesson. So:

- each uploader has the smallest limit that fits what it is for; the browser refuses a bigger file
  before sending a byte (``st.file_uploader(max_upload_size=)`` is enforced by the browser only);
- the server-wide limit (``server.maxUploadSize`` in .streamlit/config.toml, :data:`SERVER_MAX_MB`)
  is the largest of them: a client that skips the browser and sends more is refused from its
  Content-Length before the body is read;
- a file xviz refuses is dropped from the server at once and its uploader re-keyed, so it shows empty
  (:func:`release`);
- uploaded weights files are read one at a time per server (:class:`OneAtATime`): a read holds the
  file, its tensors and the new model at once.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx
from streamlit.runtime.uploaded_file_manager import UploadedFile

from xviz.images import MAX_BYTES

MB = 2**20  # Streamlit's MB on the server (the browser counts 10**6 outside Windows)
PHOTO_MAX_MB = MAX_BYTES // MB  # 25: what xviz.load_image accepts
# Xception checkpoints are 84-92 MB (timm's ImageNet .pth 91.7 MB, Keras' .h5 91.9 MB, the demo's
# .keras 86.4 MB); 128 leaves 40% for a bigger head or extra metadata, not for optimizer state (×3)
WEIGHTS_MAX_MB = 128
LABELS_MAX_MB = 1  # the 1000 ImageNet names are 22 KB
SERVER_MAX_MB = max(PHOTO_MAX_MB, WEIGHTS_MAX_MB, LABELS_MAX_MB)  # = server.maxUploadSize (tested)

# uploader names; the widget key is name, then name_1, name_2, ... after each refusal (see key())
PHOTO, CAMERA, WEIGHTS, LABELS = "image_uploader", "camera", "weights_uploader", "labels_uploader"

PHOTO_LIMIT_NOTE = (f"Photos up to {PHOTO_MAX_MB} MB. A bigger file turns red and is not sent: save a "
                    "smaller copy and upload that; the current photo stays in use.")
WEIGHTS_LIMIT_NOTE = f"Files up to {WEIGHTS_MAX_MB} MB (an Xception checkpoint is about 90 MB)."
WAITING_FOR_WEIGHTS = ("Another weights file is being read on this server (one at a time, to keep its "
                       "memory in bounds); yours is next.")


def _generation(name: str) -> str:
    return f"_{name}_generation"


def key(name: str) -> str:
    """The widget key of uploader ``name`` now: ``name``, then ``name_1``, ``name_2``, ... once
    :func:`release` has emptied it."""
    n = st.session_state.get(_generation(name), 0)
    return f"{name}_{n}" if n else name


def current(name: str) -> UploadedFile | None:
    """The file in uploader ``name`` (None if empty or not shown in this run)."""
    return st.session_state.get(key(name))


def release(name: str, file: UploadedFile) -> None:
    """Let go of a refused upload now: drop its bytes from the server's upload store, and re-key the
    uploader so it is drawn empty (the old widget, and the ``UploadedFile`` it holds, go at the end of
    the first run that draws the new one).

    The browser never DELETEs the file of an uploader that disappeared, so without the first step the
    bytes would stay until the session ends."""
    ctx = get_script_run_ctx()
    if ctx is not None:
        ctx.uploaded_file_mgr.remove_file(ctx.session_id, file.file_id)
    st.session_state[_generation(name)] = st.session_state.get(_generation(name), 0) + 1


class OneAtATime:
    """A lock that lets its caller know when it has to wait: heavy work goes through one at a time,
    and whoever queues can say so on the page.

    Example:
        >>> reads = OneAtATime()
        >>> with reads.turn(on_wait=lambda: print("waiting")):
        ...     pass  # read the file
    """

    def __init__(self):
        self._lock = threading.Lock()

    @contextmanager
    def turn(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the lock for the block; ``on_wait()`` is called first if someone else holds it."""
        if not self._lock.acquire(blocking=False):
            if on_wait is not None:
                on_wait()
            self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()
