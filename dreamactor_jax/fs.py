"""One filesystem layer for what runs read and write: local paths and URLs (``gs://``, ``s3://``) alike.

Every path goes through ``etils.epath``, which Orbax, grain and tensorstore use too, so a workdir on
``gs://bucket/run`` holds its checkpoints, metrics, summaries, markers and exports there and nowhere else
(not in ``$PWD/gs:/bucket/run``, as ``os.path.abspath`` would have it). epath picks TensorFlow's gfile for
``gs://`` when TensorFlow is installed (it is: clu needs it), else fsspec (``gcsfs``).

Object stores have no atomic rename and no append. Where a local filesystem has them they are used (a file
is written to a temp name and renamed over, so a reader never sees half of it); on a URL a file is one
object upload, which is atomic in itself, and an append rewrites the object. Libraries that only write local
files (safetensors, ArrayRecord, PIL) write into :func:`staged` directories that are uploaded afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from etils import epath

# The process's umask, read once at import (os.umask can only be read by setting it, which is not thread-safe).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def is_url(path: str | os.PathLike) -> bool:
    """``gs://...``, ``s3://...`` and the like (anything with a scheme), as opposed to a local path."""
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute (``~`` expanded); a URL as it is."""
    path = os.fspath(path)
    return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def join(base: str | os.PathLike, *parts: str) -> str:
    base = os.fspath(base)
    if not is_url(base):
        return os.path.join(base, *parts)
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def _p(path) -> epath.Path:
    return epath.Path(os.fspath(path))


def exists(path) -> bool:
    return os.path.exists(path) if not is_url(path) else _p(path).exists()


def isdir(path) -> bool:
    return os.path.isdir(path) if not is_url(path) else _p(path).is_dir()


def makedirs(path) -> None:
    if is_url(path):
        _p(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path) -> list[str]:
    """Names in a directory, sorted ([] when it does not exist)."""
    if not isdir(path):
        return []
    return sorted(os.listdir(path)) if not is_url(path) else sorted(p.name for p in _p(path).iterdir())


def open(path, mode: str = "r"):  # noqa: A001 - the module is used as fs.open
    return _p(path).open(mode)


def read_text(path) -> str:
    with open(path, "r") as f:
        return f.read()


def write_text(path, text: str) -> None:
    """Writes ``text`` so a reader sees the old file or the new one, never a part: a temp file renamed over it
    locally, one object upload on a URL."""
    if is_url(path):
        with open(path, "w") as f:
            f.write(text)
        return
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def append_text(path, text: str) -> None:
    """Appends (locally); on a URL, which has no append, rewrites the object with ``text`` added."""
    if not is_url(path):
        with open(path, "a") as f:
            f.write(text)
        return
    old = read_text(path) if exists(path) else ""
    write_text(path, old + text)


def remove(path) -> None:
    if is_url(path):
        _p(path).unlink()
    else:
        os.remove(path)


def rmtree(path) -> None:
    if is_url(path):
        _p(path).rmtree()
    else:
        shutil.rmtree(path)


def move(src, dst) -> None:
    """Renames ``src`` (a file or directory) to ``dst``: atomic locally; copy then delete on a URL."""
    if not is_url(src) and not is_url(dst):
        os.replace(src, dst)
        return
    s, d = _p(src), _p(dst)
    if s.is_dir():
        for f in s.rglob("*"):
            if not f.is_dir():
                target = d / f.relative_to(s)
                target.parent.mkdir(parents=True, exist_ok=True)
                f.copy(target)
        s.rmtree()
    else:
        s.copy(d)
        s.unlink()


def glob(directory, pattern: str) -> list[str]:
    """Sorted paths in ``directory`` whose names match ``pattern`` (``*.array_record``)."""
    import fnmatch

    return [join(directory, n) for n in listdir(directory) if fnmatch.fnmatch(n, pattern)]


def put_file(local: str, dest) -> None:
    """Copies one local file to ``dest`` (a URL, or a local path: then an atomic rename when on one disk)."""
    if not is_url(dest):
        shutil.copyfile(local, dest)
        return
    epath.Path(local).copy(_p(dest), overwrite=True)


def upload(local_dir: str, dest) -> None:
    """Copies a local directory's files to ``dest`` (a URL or a local path), keeping the layout."""
    for root, _, files in os.walk(local_dir):
        rel = os.path.relpath(root, local_dir)
        for name in files:
            target = join(dest, *(() if rel == "." else rel.split(os.sep)), name)
            makedirs(os.path.dirname(target) if not is_url(target) else target.rsplit("/", 1)[0])
            epath.Path(os.path.join(root, name)).copy(_p(target), overwrite=True)


@contextlib.contextmanager
def staged(dest) -> Iterator[str]:
    """A local directory to write ``dest``'s files into: ``dest`` itself when local, else a temp directory
    uploaded to ``dest`` when the block succeeds (and dropped either way)."""
    if not is_url(dest):
        os.makedirs(dest, exist_ok=True)
        yield os.fspath(dest)
        return
    tmp = tempfile.mkdtemp(prefix="dreamactor_stage_")
    try:
        yield tmp
        upload(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
