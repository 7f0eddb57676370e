"""The curriculum driver: learning is real (stage 1 beats untrained), phases resume, config guard."""

import importlib.util
import json

import pytest

from dreamactor_jax.curriculum import driver


def _config(repo_root):
    spec = importlib.util.spec_from_file_location("curriculum", repo_root / "configs" / "curriculum.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config("tiny")


def _small(repo_root):
    c = _config(repo_root)
    c.stage1.train.steps = 150
    c.stage1.train.log_every = 50
    c.eval.num_pairs = 8
    c.eval.batch_size = 8
    c.eval.grid_pairs = 2
    c.eval.sampler.steps = 8
    return c


def test_stage1_beats_untrained_on_held_out_pairs(tmp_path, repo_root):
    c = _small(repo_root)
    driver.run(c, str(tmp_path), only="stage1")
    assert (tmp_path / "stage1" / "DONE.json").exists()
    driver.run(c, str(tmp_path), only="eval")
    table = json.loads((tmp_path / "eval" / "table.json").read_text())["results"]
    assert set(table) == {"untrained", "stage1"}
    assert table["stage1"]["psnr"] > table["untrained"]["psnr"] + 1.0, table
    assert table["stage1"]["ssim"] > table["untrained"]["ssim"], table
    assert (tmp_path / "eval" / "grid.gif").stat().st_size > 0
    assert "| stage1 | pose |" in (tmp_path / "eval" / "table.md").read_text()


def test_workdir_with_other_config_is_refused(tmp_path, repo_root):
    c = _small(repo_root)
    driver.check_workdir_config(c, str(tmp_path))
    c2 = _small(repo_root)
    c2.stage1.optim.lr = 0.5
    c2.eval.num_pairs = 3
    with pytest.raises(driver.ConfigMismatchError, match=r"stage1\.optim\.lr: 0\.002 -> 0\.5") as e:
        driver.check_workdir_config(c2, str(tmp_path))
    assert "eval.num_pairs" in str(e.value)
    driver.check_workdir_config(c2, str(tmp_path), force=True)  # --force adopts the new config
    driver.check_workdir_config(c2, str(tmp_path))


def test_unknown_phase(tmp_path, repo_root):
    with pytest.raises(ValueError, match="--only='stage3'"):
        driver.run(_small(repo_root), str(tmp_path), only="stage3")
