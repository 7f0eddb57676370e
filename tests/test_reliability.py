"""Reliability: exact resume after SIGKILL and SIGTERM, restore onto another mesh, corrupt and failed
checkpoints, non-finite guards, resume priority (workdir > resume_from > init_from > scratch), config errors.

Training runs are child processes of ``launch/train.py`` (the real entry point) sharing one persistent
compilation cache, so only the first compiles; batch shapes are shrunk (benchmarks/chaos.py ``FAST``).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from benchmarks import chaos
from dreamactor_jax import config_lib
from dreamactor_jax.models import get_preset
from dreamactor_jax.train import checkpoint, guards, loop

STEPS = chaos.FAST["train.steps"]


def _config(repo_root, **overrides):
    """The tiny stage-1 config with the chaos overrides (the reference run's config)."""
    c = config_lib.load_config("configs/stage1_pose.py:tiny")
    for k, v in {**chaos.FAST, **overrides}.items():
        section, field = k.split(".")
        c[section][field] = v
    return c


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return chaos.child_env(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    """An uninterrupted run of STEPS steps keeping every checkpoint (2, 4, ..., 12)."""
    wd = tmp_path_factory.mktemp("reference")
    chaos.reference_run(wd, chaos.FAST, env)
    return wd


def _assert_same_run(workdir, reference):
    assert chaos.logged(workdir) == chaos.logged(reference)
    assert chaos.bitwise_equal(chaos.params_at(workdir, STEPS), chaos.params_at(reference, STEPS))


# --- interruptions ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # ~95 s; exact resume is also covered by the SIGTERM and truncated-checkpoint tests
def test_sigkill_at_random_steps_resumes_exactly(tmp_path, env, reference):
    out = chaos.chaos(3, tmp_path, env=env, reference=reference, seed=3)
    assert out["exact"] == 3 and out["final_exact"], out
    _assert_same_run(out["workdir"], reference)


def test_sigterm_saves_at_step_boundary_and_exits_zero(tmp_path, env, reference):
    wd = tmp_path / "run"
    cmd = chaos.train_command(wd, chaos.FAST)
    seg = chaos.run_segment(cmd, env=env, signal_after=5, sig=signal.SIGTERM)
    assert seg.returncode == 0, seg.output[-3000:]
    saved = chaos.latest_step(wd)
    assert f"preempted: saved checkpoint step {saved} to {wd / 'checkpoints' / str(saved)}" in seg.output
    assert f"done: {saved} steps" in seg.output  # the launcher returned normally
    assert 5 <= saved < STEPS
    assert chaos.logged(wd) == chaos.logged(reference)[:saved]
    rest = chaos.run_segment(cmd, env=env)
    assert rest.returncode == 0 and f"(full state, step {saved})" in rest.output, rest.output[-3000:]
    _assert_same_run(wd, reference)


def test_restore_onto_a_different_mesh(tmp_path, repo_root):
    """Saved from fsdp=8 over 8 devices, restored onto data=2 x fsdp=2 (4 devices) with the target shardings."""
    c8 = _config(repo_root)
    c8.optim.ema_decay = 0.5
    c8.mesh.update(data=1, fsdp=8)
    c8.data.batch_size = 8  # one example per fsdp shard (a smaller batch would replicate the activations)
    s8 = loop.prepare(c8)
    state8, _, _ = loop.initial_state(c8, s8, loop.StartPlan("scratch"), log=lambda m: None)
    kern8 = state8.params["blocks"]["ffn"]["net_0"]["proj"]["kernel"]
    assert len(kern8.sharding.device_set) == 8 and kern8.addressable_shards[0].data.size < kern8.size
    ckpt = tmp_path / "checkpoints"
    mngr = checkpoint.manager(str(ckpt), async_save=False)
    checkpoint.save(mngr, 3, params=state8.params, opt_state=state8.opt_state, ema=state8.ema, model_cfg=s8.mcfg)
    mngr.close()
    want = jax.tree.map(np.asarray, (state8.params, state8.opt_state, state8.ema))

    c4 = _config(repo_root)
    c4.optim.ema_decay = 0.5
    c4.mesh.update(data=2, fsdp=2)
    c4.data.batch_size = 8
    s4 = loop.prepare(c4)
    assert s4.mesh.devices.size == 4
    state4, start, _ = loop.initial_state(c4, s4, loop.resolve_start(str(ckpt)), log=lambda m: None)
    assert start == 3 and int(state4.step) == 3
    got = (state4.params, state4.opt_state, state4.ema)
    shardings = (s4.shardings.state.params, s4.shardings.state.opt_state, s4.shardings.state.ema)
    for a, b, sh in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(shardings)):
        assert np.asarray(a).tobytes() == b.tobytes()
        assert a.sharding == sh and len(a.sharding.device_set) == 4
    kern4 = state4.params["blocks"]["ffn"]["net_0"]["proj"]["kernel"]
    assert "fsdp" in str(kern4.sharding.spec) and kern4.addressable_shards[0].data.size < kern4.size  # not replicated


# --- broken checkpoints ----------------------------------------------------------------------------------------


def test_truncated_latest_checkpoint_falls_back_to_previous(tmp_path, env, reference):
    wd = tmp_path / "run"
    shutil.copytree(reference, wd)
    data = [p for p in (wd / "checkpoints" / str(STEPS) / "params").rglob("*") if p.is_file() and "/d/" in str(p)]
    victim = max(data, key=lambda p: p.stat().st_size)
    os.truncate(victim, victim.stat().st_size // 2)
    seg = chaos.run_segment(chaos.train_command(wd, chaos.FAST), env=env)
    assert seg.returncode == 0, seg.output[-3000:]
    bad = wd / "checkpoints" / str(STEPS)
    assert f"checkpoint step {STEPS} at {bad} is unreadable" in seg.output
    assert f"resuming from step {STEPS - 2} of {wd / 'checkpoints'}" in seg.output
    assert len(list((wd / "corrupt_checkpoints").glob(f"step_{STEPS}_*"))) == 1
    _assert_same_run(wd, reference)  # steps 11 and 12 were redone, bit for bit


def test_half_written_step_is_ignored_and_cleaned(tmp_path):
    own = tmp_path / "checkpoints"
    _fake_checkpoint(own, 2)
    tmp = own / "4.orbax-checkpoint-tmp-1234567"
    (tmp / "params").mkdir(parents=True)
    (tmp / "params" / "junk").write_bytes(b"\0" * 100)
    plan = loop.resolve_start(str(own))
    assert plan.kind == "workdir" and plan.steps == (2,)
    mngr = checkpoint.manager(str(own))  # a run's (writable) manager removes leftovers of killed saves
    _save_fake(mngr, 6)
    mngr.close()
    assert not tmp.exists() and checkpoint.finalized_steps(str(own)) == [6, 2]


def _break_dir(path: Path) -> str:
    """Makes new saves under ``path`` fail; returns how. chmod when it bites (non-root); as root, where chmod
    does not stop writes, the directory is swapped for a regular file (a real ENOTDIR, no monkeypatching)."""
    os.chmod(path, 0o555)
    probe = path / ".probe"
    try:
        probe.write_text("x")
    except PermissionError:
        return "chmod"
    probe.unlink()
    os.chmod(path, 0o755)
    os.rename(path, path.with_name(path.name + ".aside"))
    path.write_text("not a directory")
    return "swap"


def _mend_dir(path: Path, how: str) -> None:
    if how == "chmod":
        os.chmod(path, 0o755)
    else:
        path.unlink()
        os.rename(path.with_name(path.name + ".aside"), path)


def test_failed_save_is_reported_and_previous_checkpoint_stays_usable(tmp_path, env, reference):
    wd = tmp_path / "run"
    ckpt = wd / "checkpoints"
    how = []

    def on_line(line, proc):
        # Once step 4 is committed (saves are async: wait for the final directory name), break the directory.
        if not how and line.startswith("step ") and (ckpt / "4").is_dir():
            how.append(_break_dir(ckpt))

    seg = chaos.run_segment(chaos.train_command(wd, chaos.FAST), env=env, on_line=on_line)
    assert how, seg.output[-3000:]
    _mend_dir(ckpt, how[0])
    assert seg.returncode not in (0, None), seg.output[-3000:]
    assert "CheckpointSaveError: saving checkpoint step" in seg.output, (how, seg.output[-3000:])
    failed = int(seg.output.split("CheckpointSaveError: saving checkpoint step ")[1].split()[0])
    assert f"to {ckpt / str(failed)} failed" in seg.output
    good = chaos.latest_step(wd)
    assert good is not None and 4 <= good < failed
    assert chaos.bitwise_equal(chaos.params_at(wd, good), chaos.params_at(reference, good)), how


# --- non-finite steps ------------------------------------------------------------------------------------------

_POISON = textwrap.dedent("""
    import runpy, sys
    import numpy as np
    from dreamactor_jax.data import sources
    make = sources.make_source
    def poisoned_source(config, text_dim, shard=None):
        src = make(config, text_dim, shard)
        def batch(i):
            b = src(i)
            return dict(b, target=b["target"] * np.float32("nan")) if i == {index} else b
        return batch
    sources.make_source = poisoned_source
    sys.argv = {argv!r}
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def _poisoned_command(wd, index, **overrides):
    argv = chaos.train_command(wd, {**chaos.FAST, **overrides})[1:]
    return [sys.executable, "-c", _POISON.format(index=index, argv=argv)]


def test_nonfinite_step_stops_the_run_and_keeps_last_good_checkpoint(tmp_path, env, reference):
    wd = tmp_path / "run"
    seg = chaos.run_segment(_poisoned_command(wd, index=6), env=env)  # batch 6 feeds step 7
    assert seg.returncode != 0
    assert "NonFiniteError: non-finite loss nan or grad norm nan at step 7" in seg.output, seg.output[-3000:]
    assert chaos.latest_step(wd) == 6
    assert chaos.bitwise_equal(chaos.params_at(wd, 6), chaos.params_at(reference, 6))


def test_skip_nonfinite_steps_drops_the_update_and_counts_it(tmp_path, env, reference):
    wd = tmp_path / "run"
    cmd = _poisoned_command(wd, index=6, **{"train.skip_nonfinite_steps": True, "train.keep_checkpoints": 0})
    seg = chaos.run_segment(cmd, env=env)
    assert seg.returncode == 0, seg.output[-3000:]
    assert "step 7: non-finite loss nan or grad norm nan; update skipped (1 skipped so far)" in seg.output
    lines = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [x["skipped"] for x in lines] == [float(s == 7) for s in range(1, STEPS + 1)]
    assert lines[-1]["skipped_steps"] == 1 and checkpoint.read_meta(str(wd / "checkpoints"))["skipped_steps"] == 1
    assert chaos.bitwise_equal(chaos.params_at(wd, 6), chaos.params_at(reference, 6))
    final = chaos.params_at(wd, STEPS)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(final))
    assert not chaos.bitwise_equal(final, chaos.params_at(reference, STEPS))


# --- where a run starts ----------------------------------------------------------------------------------------


def _save_fake(mngr, step, kind="train"):
    checkpoint.save(mngr, step, params={"w": np.full((3,), step, np.float32)}, model_cfg=get_preset("tiny"),
                    kind=kind)
    mngr.wait_until_finished()


def _fake_checkpoint(directory, *steps, kind="train"):
    mngr = checkpoint.manager(str(directory), async_save=False)
    for s in steps:
        _save_fake(mngr, s, kind)
    mngr.close()
    return str(directory)


def test_resolve_start_priority(tmp_path):
    own = str(tmp_path / "run" / "checkpoints")
    other_run = tmp_path / "other"
    _fake_checkpoint(other_run / "checkpoints", 4, 8)
    init = _fake_checkpoint(tmp_path / "import", 0, kind="import")
    assert loop.resolve_start(own) == loop.StartPlan("scratch")
    assert loop.resolve_start(own, init_from=init) == loop.StartPlan("init_from", init, (0,))
    # resume_from accepts a run's workdir or its checkpoints dir, and outranks init_from
    want = loop.StartPlan("resume_from", str(other_run / "checkpoints"), (8, 4))
    assert loop.resolve_start(own, resume_from=str(other_run), init_from=init) == want
    assert loop.resolve_start(own, resume_from=str(other_run / "checkpoints")) == want
    _fake_checkpoint(own, 2)
    assert loop.resolve_start(own, resume_from=str(other_run), init_from=init) == loop.StartPlan("workdir", own, (2,))
    with pytest.raises(FileNotFoundError, match="config.train.init_from="):
        loop.resolve_start(str(tmp_path / "new"), init_from=str(tmp_path / "missing"))


def test_resume_from_and_init_from_states(tmp_path, repo_root, reference):
    c = _config(repo_root)
    c.optim.ema_decay = 0.9  # the reference kept no EMA: resume and init both start it from the params
    setup = loop.prepare(c)
    own = str(tmp_path / "run" / "checkpoints")
    ref_params = chaos.params_at(reference, STEPS)
    quiet = lambda m: None

    state, start, _ = loop.initial_state(c, setup, loop.resolve_start(own, resume_from=str(reference)), log=quiet)
    assert start == STEPS and int(state.step) == STEPS
    assert chaos.bitwise_equal(jax.tree.map(np.asarray, state.params), ref_params)
    ref_opt = checkpoint.restore_item(str(reference / "checkpoints"), "opt_state", step=STEPS)
    got_opt = jax.tree.leaves(state.opt_state)  # an untargeted restore has lists for tuples: compare leaves
    assert len(got_opt) == len(jax.tree.leaves(ref_opt))
    assert all(np.asarray(a).tobytes() == np.asarray(b).tobytes() for a, b in zip(got_opt, jax.tree.leaves(ref_opt)))
    assert chaos.bitwise_equal(jax.tree.map(np.asarray, state.ema), ref_params)

    # init_from an import-kind checkpoint (params only), as convert/importer writes them
    imported = tmp_path / "imported"
    mngr = checkpoint.manager(str(imported), async_save=False)
    checkpoint.save(mngr, 0, params=ref_params, model_cfg=setup.mcfg, kind="import")
    mngr.close()
    state, start, _ = loop.initial_state(c, setup, loop.resolve_start(own, init_from=str(imported)), log=quiet)
    assert start == 0 and int(state.step) == 0
    assert chaos.bitwise_equal(jax.tree.map(np.asarray, state.params), ref_params)
    assert chaos.bitwise_equal(jax.tree.map(np.asarray, state.ema), ref_params)
    assert all(not np.asarray(x).any() for x in jax.tree.leaves(state.opt_state))  # fresh AdamW state

    with pytest.raises(checkpoint.IncompatibleCheckpointError, match="config.train.init_from"):
        loop.initial_state(c, setup, loop.resolve_start(own, resume_from=str(imported)), log=quiet)
    c.model.num_layers = 3
    with pytest.raises(checkpoint.IncompatibleCheckpointError, match="num_layers: checkpoint 2 vs run 3"):
        loop.initial_state(c, loop.prepare(c), loop.resolve_start(own, init_from=str(reference)), log=quiet)


# --- small pieces ----------------------------------------------------------------------------------------------


def test_retention_keeps_newest_and_every_kth(tmp_path):
    mngr = checkpoint.manager(str(tmp_path), max_to_keep=2, keep_period=4, async_save=False)
    for s in range(1, 11):
        _save_fake(mngr, s)
    mngr.close()
    assert checkpoint.finalized_steps(str(tmp_path)) == [10, 9, 8, 4]


def test_truncate_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    assert guards.truncate_metrics(str(path), 3) == 3
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3]


def test_config_errors_name_the_field(repo_root, monkeypatch):
    from absl import flags
    from ml_collections import config_flags

    def parse(*args):
        monkeypatch.setattr(sys, "argv", ["train.py", "--config=configs/stage1_pose.py:tiny", *args])
        fv = flags.FlagValues()
        config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True)
        fv(sys.argv)
        return fv.config

    monkeypatch.chdir(repo_root)
    assert parse("--config.train.keep_period=5").train.keep_period == 5
    with pytest.raises(AttributeError, match="keep_perod"):
        parse("--config.train.keep_perod=5")
    with pytest.raises(flags.IllegalFlagValueError, match="config.train.steps=abc"):
        parse("--config.train.steps=abc")
    c = _config(repo_root)
    c.train.keep_period = -1
    with pytest.raises(ValueError, match="config.train.keep_period must be >= 0"):
        config_lib.validate(c)
    c = _config(repo_root)
    c.mesh.fsdp = 16
    with pytest.raises(ValueError, match=r"config.mesh asks for 16 devices .* only 8 are available"):
        loop.prepare(c)


@pytest.mark.slow
def test_chaos_benchmark(repo_root, tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/chaos.py", "--n=2", "--steps=8", f"--workdir={tmp_path}"],
                         cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and "2 of 2 resumes exact" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
