"""AOT compilation of the real train step for TPU topologies (skipped cleanly without libtpu)."""

import importlib.util
import subprocess
import sys

import pytest

from dreamactor_jax import config_lib

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed")


def _tiny(repo_root, **mesh):
    c = config_lib.load_config("configs/stage1_pose.py:tiny")
    c.mesh.update(mesh)
    return c


@pytest.mark.slow  # ~90 s; test_aot_cli compiles the tiny step for a TPU topology in the default run
def test_tiny_compiles_for_v5p_2x2x2(repo_root):
    from dreamactor_jax.train import aot

    c = _tiny(repo_root, data=1, fsdp=-1)
    c.data.batch_size = 8
    report = aot.aot_compile(c, "v5p:2x2x2")
    assert report.chips == 8 and report.mesh["fsdp"] == 8
    assert 0 < report.total_bytes < report.hbm_bytes
    # Compiled FLOPs include elementwise work and the backward's extra matmuls, never less than the model's.
    assert 0.9 < report.compiled_flops / report.model_flops < 2.0, report.compiled_flops / report.model_flops
    assert "per-chip total" in "\n".join(report.lines(0.5))


def test_aot_cli(repo_root):
    out = subprocess.run([sys.executable, "launch/aot_compile.py", "--config=configs/stage1_pose.py:tiny",
                          "--topology=v5e:2x2", "--config.mesh.data=-1", "--count_flops=false",
                          "--step_seconds=0.1"], cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "topology: v5e:2x2 (4 chips)" in out.stdout and "per-chip total" in out.stdout


@pytest.mark.slow
def test_wan_1_3b_compiles_for_v5p(repo_root):
    from dreamactor_jax.train import aot

    c = _tiny(repo_root, data=1, fsdp=-1)
    # The 1.3B preset as it is (none of the tiny curriculum's width overrides), on the 16-channel canvas;
    # the Pallas splash kernel on TPU.
    c.model = config_lib.model_section("wan2.1-t2v-1.3b", in_channels=36, dtype="bfloat16", remat="full",
                                       attention="auto")
    c.data.update(batch_size=8, frames=21, height=60, width=104, text_len=512, channels=16)
    report = aot.aot_compile(c, "v5p:2x2x2", count_flops=False)
    assert report.total_bytes < report.hbm_bytes


def test_offload_remat_moves_the_saved_residuals_to_host(repo_root):
    """model.remat='offload' keeps each layer's input in host memory (on the 14B 720p step that takes HBM from
    117.8 to 87.9 GiB per chip of v5p:2x2x1; the tiny step is too small to show the saving, only the placement)."""
    from dreamactor_jax.train import aot

    reports = {}
    for remat in ("full", "offload"):
        c = _tiny(repo_root, data=1, fsdp=-1)
        c.model.update(remat=remat, scan_layers=True)
        c.data.update(batch_size=4, frames=8, height=16, width=16)
        reports[remat] = aot.aot_compile(c, "v5p:2x2x1", count_flops=False)
    full, off = reports["full"], reports["offload"]
    assert full.host_temp_bytes == 0 and off.host_temp_bytes > 0
    assert "offloaded activations" in "\n".join(off.lines()) and "offloaded" not in "\n".join(full.lines())
