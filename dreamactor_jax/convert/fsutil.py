"""All-or-nothing output directories for converters."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_dir(out: str) -> Iterator[str]:
    """Yields a fresh temp directory next to ``out`` and renames it to ``out`` only if the block succeeds.

    A failed or interrupted conversion therefore leaves nothing at ``out``. The temp
    directory sits in ``out``'s parent so the final rename stays on one filesystem.

    Raises:
      FileExistsError: ``out`` exists and is not an empty directory (nothing is overwritten).
    """
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
