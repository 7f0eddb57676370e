"""All-or-nothing output directories for converters."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from dreamactor_jax import fs


@contextlib.contextmanager
def atomic_dir(out: str) -> Iterator[str]:
    """Yields a fresh temp directory next to ``out`` and renames it to ``out`` only if the block succeeds.

    A failed or interrupted conversion therefore leaves nothing at ``out``. The temp
    directory sits in ``out``'s parent so the final rename stays on one filesystem.

    A URL ``out`` (``gs://``, no rename there) gets a local temp directory that is uploaded when the block
    succeeds, so a failure still leaves nothing at ``out`` (an interrupted upload can leave part of it).

    Raises:
      FileExistsError: ``out`` exists and is not an empty directory (nothing is overwritten).
    """
    if fs.is_url(out):
        if fs.listdir(out) or (fs.exists(out) and not fs.isdir(out)):
            raise FileExistsError(f"{out} already exists and is not empty; refusing to overwrite it")
        with fs.staged(out) as tmp:
            yield tmp
        return
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FileExistsError(f"{out} already exists and is not empty; refusing to overwrite it")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
    try:
        yield tmp
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above); os.rename cannot replace a directory on every platform
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
