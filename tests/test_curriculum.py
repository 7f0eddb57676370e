"""The curriculum driver: learning is real (stage 1 beats untrained and copying the reference), phases resume,
config guard."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from dreamactor_jax import config_lib
from dreamactor_jax.curriculum import driver


def _config(repo_root):
    return config_lib.load_config("configs/curriculum.py:tiny")


def _small(repo_root):
    c = _config(repo_root)
    c.stage1.train.steps = 150
    c.stage1.train.log_every = 50
    c.eval.num_pairs = 8
    c.eval.batch_size = 8
    c.eval.grid_pairs = 2
    c.eval.sampler.steps = 8
    return c


def test_stage1_beats_untrained_and_copy_reference_on_held_out_pairs(tmp_path, repo_root):
    """150 steps of the tiny recipe already follow the motion: beating "copy the reference into every frame" on
    PSNR and keypoint consistency needs the subject moved to where the driver puts it."""
    c = _small(repo_root)
    driver.run(c, str(tmp_path), only="stage1")
    assert (tmp_path / "stage1" / "DONE.json").exists()
    driver.run(c, str(tmp_path), only="eval")
    table = json.loads((tmp_path / "eval" / "table.json").read_text())["results"]
    assert {n for n, r in table.items() if not r["baseline"]} == {"untrained", "stage1"}
    assert table["stage1"]["psnr"] > table["untrained"]["psnr"] + 1.0, table
    assert table["stage1"]["ssim"] > table["untrained"]["ssim"], table
    for metric in ("psnr", "keypoint_consistency"):
        assert table["stage1"][metric] > table["copy_reference"][metric], (metric, table)
    assert (tmp_path / "eval" / "grid.gif").stat().st_size > 0
    assert "| stage1 | pose |" in (tmp_path / "eval" / "table.md").read_text()


def test_workdir_with_other_config_is_refused(tmp_path, repo_root):
    c = _small(repo_root)
    driver.check_workdir_config(c, str(tmp_path))
    c2 = _small(repo_root)
    c2.stage1.optim.lr = 0.5
    c2.eval.num_pairs = 3
    with pytest.raises(driver.ConfigMismatchError, match=r"stage1\.optim\.lr: 0\.003 -> 0\.5") as e:
        driver.check_workdir_config(c2, str(tmp_path))
    assert "eval.num_pairs" in str(e.value)
    driver.check_workdir_config(c2, str(tmp_path), force=True)  # --force adopts the new config
    driver.check_workdir_config(c2, str(tmp_path))


def test_unknown_phase(tmp_path, repo_root):
    with pytest.raises(ValueError, match="--only='stage3'"):
        driver.run(_small(repo_root), str(tmp_path), only="stage3")


def _fast_overrides(workdir):
    return [sys.executable, "launch/curriculum.py", "--config=configs/curriculum.py:tiny", f"--workdir={workdir}",
            "--config.stage1.train.steps=60", "--config.stage1.train.checkpoint_every=10",
            "--config.stage1.train.log_every=10", "--config.synthesis.num_clips=16",
            "--config.synthesis.batch_size=8", "--config.synthesis.shard_size=8", "--config.synthesis.threshold=0.0",
            "--config.synthesis.sampler.steps=4", "--config.stage2.train.steps=20",
            "--config.stage2.train.log_every=10", "--config.eval.num_pairs=4", "--config.eval.batch_size=4",
            "--config.eval.grid_pairs=2", "--config.eval.sampler.steps=4"]


@pytest.mark.slow
def test_killed_curriculum_continues_where_it_stopped(tmp_path, repo_root):
    """Kill the driver mid-stage-1 (SIGKILL), rerun the same command: it resumes and finishes every phase."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = _fast_overrides(tmp_path)
    proc = subprocess.Popen(cmd, cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpts = tmp_path / "stage1" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir())):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "stage1" / "DONE.json").exists()
    out = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # Stage 1 continued from its last checkpoint instead of starting over.
    assert re.search(r"start: workdir .*\(full state, step [1-9]\d*\)", out.stdout), out.stdout[-3000:]
    for phase in driver.PHASES:
        assert (tmp_path / phase / "DONE.json").exists(), phase
    assert (tmp_path / "export" / "diffusers" / "config.json").exists()
    again = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("already done") == len(driver.PHASES)
