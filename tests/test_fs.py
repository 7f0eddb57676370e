"""The filesystem layer's local behaviour and URL handling (the bucket side is in tests/test_gcs.py)."""

import os

from dreamactor_jax import fs


def test_local_writes_are_atomic_with_normal_permissions(tmp_path):
    path = tmp_path / "a" / "b.json"
    fs.write_text(path, "{}")
    assert path.read_text() == "{}" and os.listdir(tmp_path / "a") == ["b.json"]  # no temp file left
    assert path.stat().st_mode & 0o777 == 0o666 & ~fs._UMASK  # as open() would create it, not mkstemp's 0600
    fs.append_text(path, "x")
    assert fs.read_text(path) == "{}x"
    fs.move(path, tmp_path / "c.json")
    assert fs.listdir(tmp_path) == ["a", "c.json"] and fs.listdir(tmp_path / "a") == []
    with fs.staged(tmp_path / "out") as local:
        assert local == str(tmp_path / "out")


def test_urls_are_kept_as_urls():
    assert fs.is_url("gs://b/run") and not fs.is_url("/b/run") and not fs.is_url("runs/x")
    assert fs.absolute("gs://b/run") == "gs://b/run"  # os.path.abspath would make it $PWD/gs:/b/run
    assert fs.absolute("runs/x") == os.path.abspath("runs/x")
    assert fs.join("gs://b/run/", "checkpoints", "4") == "gs://b/run/checkpoints/4"
    assert fs.join("/b/run", "checkpoints") == "/b/run/checkpoints"
