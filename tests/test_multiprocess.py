"""Multi-host: two processes of 4 CPU devices train exactly like one process of 8, through ``launch/train.py``.

Also: the precedence of :func:`dreamactor_jax.parallel.distributed.resolve` (flags > environment >
detected cluster > single host), without initialising anything, and the per-process slices of the
data sources (their concatenation in process order is the single-process batch).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from dreamactor_jax import config_lib
from dreamactor_jax.parallel import distributed

TIMEOUT_S = 400  # ~1 min on an idle 2-core machine (three XLA compiles of the train step); generous under load
# Smaller clips than :tiny's: the step's compile time dominates either way, its run time need not.
ARGS = ["--config=configs/stage1_pose.py:tiny", "--config.mesh.data=-1", "--config.data.batch_size=8",
        "--config.data.source=synthetic", "--config.train.steps=3", "--config.train.log_every=1",
        "--config.data.frames=3", "--config.data.height=8", "--config.data.width=8"]

# Only JAX: a failure here is the environment's (sockets, gloo), not ours, and skips the test.
PROBE = textwrap.dedent("""
    import sys, jax
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]),
                               initialization_timeout=30)
    assert jax.device_count() == 8 and jax.local_device_count() == 4, jax.devices()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    for k in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
        env.pop(k, None)
    return env


def _communicate_all(procs, timeout):
    """Every process's output; on timeout kills them all and raises AssertionError with their output tails."""
    deadline = time.monotonic() + timeout
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=max(deadline - time.monotonic(), 0.1))[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        tails = [p.communicate()[0] if i >= len(outs) else outs[i] for i, p in enumerate(procs)]
        raise AssertionError(f"timed out after {timeout} s:\n" + "\n----\n".join(t[-3000:] for t in tails)) from None
    return outs


def _skip_unless_distributed_works(repo_root):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", PROBE, f"localhost:{port}", str(i)], cwd=repo_root,
                              env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        outs = _communicate_all(procs, 60)
    except AssertionError as e:
        pytest.skip(f"jax.distributed.initialize with 2 CPU processes is not possible here: {e}")
    if any(p.returncode for p in procs):
        pytest.skip("jax.distributed.initialize with 2 CPU processes is not possible here:\n"
                    + "\n----\n".join(o[-1500:] for o in outs))


def _read_losses(workdir) -> list[float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [1, 2, 3], rows
    return [r["loss"] for r in rows]


def test_two_processes_match_one_process(repo_root, tmp_path):
    _skip_unless_distributed_works(repo_root)
    from dreamactor_jax.train import checkpoint

    train = [sys.executable, "launch/train.py", *ARGS]
    port = _free_port()
    single = tmp_path / "single"
    multi = tmp_path / "multi"

    def launch(cmd, devices):
        return subprocess.Popen(cmd, cwd=repo_root, env=_env(devices), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    # All three at once: the reference does not depend on the pair, and the wall time halves.
    procs = [launch([*train, f"--workdir={single}"], 8)] + [
        launch([*train, f"--workdir={multi}", f"--coordinator_address=localhost:{port}", "--num_processes=2",
                f"--process_id={i}"], 4) for i in range(2)]
    outs = _communicate_all(procs, TIMEOUT_S)
    for name, p, out in zip(("single", "process 0", "process 1"), procs, outs):
        assert p.returncode == 0, f"{name} failed:\n{out[-4000:]}"
    assert "mesh: {'data': 8," in outs[1], outs[1][-2000:]
    assert "step 3/3" not in outs[2]  # only process 0 logs

    np.testing.assert_allclose(_read_losses(multi), _read_losses(single), rtol=1e-5)
    ref = checkpoint.restore_item(str(single / "checkpoints"), "params")
    # The pair's saved shardings name two processes' devices, absent here: restore onto one local device.
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = checkpoint.abstract_like(ref, jax.tree.map(lambda _: one, ref))
    got = checkpoint.restore_item(str(multi / "checkpoints"), "params", target=target)
    ref_leaves, got_leaves = _leaves(ref), _leaves(got)
    assert ref_leaves.keys() == got_leaves.keys()
    for k, v in ref_leaves.items():
        np.testing.assert_allclose(got_leaves[k], v, rtol=1e-4, atol=1e-6, err_msg=k)


# A sequence group that spans both processes: mesh tensor=2 x sequence=4, of which dcn_sequence=2 runs across the
# two processes (parallel/mesh.py). Both processes' devices hold every row, so each builds the whole batch (1 or 2
# rows) and the pair trains exactly like one process of 8 devices with the same mesh.
SPANNING = ["--config.mesh.tensor=2", "--config.mesh.sequence=4", "--config.model.sequence_parallel=ring"]

SPAN_PROBE = textwrap.dedent("""
    import sys, jax, numpy as np
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]),
                               initialization_timeout=30)
    from jax.sharding import NamedSharding, PartitionSpec as P
    from dreamactor_jax.parallel import feeding, mesh
    m = mesh.make_mesh(dict(tensor=2, sequence=4, dcn_sequence=2))
    groups = [sorted({d.process_index for d in m.devices[0, 0, t, :]}) for t in range(2)]
    sharding = NamedSharding(m, P(("data", "fsdp")))
    for batch in (1, 2):
        block = feeding.row_block(sharding, batch)
        rows = np.arange(batch, dtype=np.float32)[block.start:block.stop]
        arr = feeding.global_batch({"x": rows}, {"x": sharding}, block)["x"]
        got = [np.asarray(s.data).tolist() for s in arr.addressable_shards]
        print("BLOCK", batch, block.index, block.count, block.size, got)
    print("GROUPS", groups)
""")


def test_sequence_group_spanning_processes_matches_one_process(repo_root, tmp_path):
    _skip_unless_distributed_works(repo_root)
    port = _free_port()
    probe = [subprocess.Popen([sys.executable, "-c", SPAN_PROBE, f"localhost:{port}", str(i)], cwd=repo_root,
                              env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    for p, out in zip(probe, _communicate_all(probe, 120)):
        assert p.returncode == 0, out[-3000:]
        assert "GROUPS [[0, 1], [0, 1]]" in out, out[-2000:]  # every sequence group holds devices of both
        assert "BLOCK 1 0 1 1 [[0.0], [0.0], [0.0], [0.0]]" in out, out[-2000:]  # both build row 0
        assert "BLOCK 2 0 1 2 [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]" in out, out[-2000:]

    def launch(cmd, devices):
        return subprocess.Popen(cmd, cwd=repo_root, env=_env(devices), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    for batch in (1, 2):
        train = [sys.executable, "launch/train.py", *ARGS[:1], *ARGS[3:], *SPANNING,
                 f"--config.data.batch_size={batch}"]
        single, multi = tmp_path / f"single{batch}", tmp_path / f"multi{batch}"
        port = _free_port()
        procs = [launch([*train, f"--workdir={single}"], 8)] + [
            launch([*train, "--config.mesh.dcn_sequence=2", f"--workdir={multi}",
                    f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"], 4)
            for i in range(2)]
        outs = _communicate_all(procs, TIMEOUT_S)
        for name, p, out in zip(("single", "process 0", "process 1"), procs, outs):
            assert p.returncode == 0, f"batch {batch}, {name} failed:\n{out[-4000:]}"
        assert "mesh: {'data': 1, 'fsdp': 1, 'tensor': 2, 'sequence': 4}" in outs[1], outs[1][-2000:]
        for key in ("loss", "grad_norm"):
            np.testing.assert_allclose(_read_metric(multi, key), _read_metric(single, key), rtol=1e-5,
                                       err_msg=f"batch {batch} {key}")


def _read_metric(workdir, key) -> list[float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [1, 2, 3], rows
    return [r[key] for r in rows]


# Synthesis over two processes: process 0's shards all pass, process 1's all fail. Both report the pair's totals
# (so neither raises "accepted none" on its own), and the run's sums count every process's shards.
SYNTHESIS = textwrap.dedent("""
    import json, sys
    import jax, ml_collections, numpy as np
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]),
                               initialization_timeout=30)
    from dreamactor_jax.codecs import get_codec
    from dreamactor_jax.curriculum import synthesis
    from dreamactor_jax.data.procedural import dataset as proc
    from dreamactor_jax.data.text import TextEncoder
    from dreamactor_jax.parallel import distributed

    assert distributed.sum_over_processes([jax.process_index() + 1, 7]) == [3, 14]
    mine = jax.process_index() == 0
    synthesis.score = lambda s, e: {"pose_consistency": 0.0, "appearance_consistency": 0.0, "score": float(mine)}
    animator = lambda refs, pose, captions, key: np.repeat(refs[:, None], pose.shape[1], 1)
    scfg = ml_collections.ConfigDict(dict(num_clips=6, shard_size=1, batch_size=1, threshold=0.5, index_offset=0))
    pcfg = proc.ProceduralConfig(frames=3, height=8, width=8)
    out = synthesis.run_synthesis(animator, get_codec("space_to_depth", spatial_factor=2, latent_channels=16),
                                  TextEncoder(4, 8, 0), pcfg, scfg, sys.argv[3], seed=0)
    print("SUMMARY", json.dumps({k: out[k] for k in ("clips", "accepted")}))
""")


def test_synthesis_summary_counts_every_process(repo_root, tmp_path):
    _skip_unless_distributed_works(repo_root)
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", SYNTHESIS, f"localhost:{port}", str(i), str(tmp_path)],
                              cwd=repo_root, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = _communicate_all(procs, 120)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        summary = json.loads(out.split("SUMMARY ")[-1])
        assert summary == {"clips": 6, "accepted": 3}, summary  # shards 0, 2, 4 (process 0) of 0..5
    assert len(list((tmp_path / "records").glob("*.array_record"))) == 3


def _leaves(tree) -> dict:
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


# ---- resolve(): precedence, no initialisation ----

CLUSTER_VARS = ("SLURM_NTASKS", "SLURM_PROCID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
                distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID)


@pytest.fixture
def clean_env(monkeypatch):
    for k in CLUSTER_VARS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_single_host_is_a_no_op(clean_env):
    calls = []
    clean_env.setattr(distributed.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert distributed.resolve() is None
    assert distributed.maybe_initialize() is None
    clean_env.setenv("TPU_WORKER_HOSTNAMES", "localhost")  # one TPU host (the AOT tests set this)
    assert distributed.maybe_initialize() is None
    clean_env.setenv("SLURM_NTASKS", "1")
    clean_env.setenv("SLURM_PROCID", "0")
    assert distributed.maybe_initialize() is None
    clean_env.setenv("SLURM_NTASKS", "4")
    clean_env.delenv("SLURM_PROCID")  # an sbatch script's shell, not an srun task
    assert distributed.maybe_initialize() is None
    assert calls == []


def test_flags_then_env_then_cluster(clean_env):
    calls = []
    clean_env.setattr(distributed.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    clean_env.setattr(distributed.jax.distributed, "is_initialized", lambda: False)
    plan = distributed.maybe_initialize("h0:1234", 2, 1)
    assert plan.source == "explicit" and calls[-1] == dict(coordinator_address="h0:1234", num_processes=2,
                                                           process_id=1)

    clean_env.setenv(distributed.ENV_COORDINATOR, "env0:99")
    clean_env.setenv(distributed.ENV_NUM_PROCESSES, "4")
    clean_env.setenv(distributed.ENV_PROCESS_ID, "3")
    plan = distributed.maybe_initialize()
    assert plan.source == "env" and calls[-1] == dict(coordinator_address="env0:99", num_processes=4, process_id=3)
    plan = distributed.maybe_initialize(process_id=2)  # a flag overrides its own field only
    assert plan.source == "explicit+env"
    assert calls[-1] == dict(coordinator_address="env0:99", num_processes=4, process_id=2)
    assert distributed.maybe_initialize(num_processes=1) is None  # explicitly one process: no init
    assert len(calls) == 3

    for k in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
        clean_env.delenv(k)
    clean_env.setenv("SLURM_NTASKS", "8")
    clean_env.setenv("SLURM_PROCID", "5")
    plan = distributed.maybe_initialize()
    assert plan.source == "slurm" and calls[-1] == {}  # JAX's SLURM detection fills in everything
    plan = distributed.maybe_initialize(coordinator_address="h0:1")
    assert plan.source == "explicit+slurm" and calls[-1] == dict(coordinator_address="h0:1")
    for k in ("SLURM_NTASKS", "SLURM_PROCID"):
        clean_env.delenv(k)
    clean_env.setenv("TPU_WORKER_HOSTNAMES", "t0,t1,t2,t3")
    assert distributed.maybe_initialize().source == "tpu" and calls[-1] == {}
    clean_env.setenv("TPU_PROCESS_ADDRESSES", "t0:8476")  # JAX reads this one first: a single host
    assert distributed.maybe_initialize() is None
    clean_env.delenv("TPU_PROCESS_ADDRESSES")

    clean_env.setattr(distributed.jax.distributed, "is_initialized", lambda: True)
    n = len(calls)
    assert distributed.maybe_initialize().source == "tpu" and len(calls) == n  # initialised once only


def test_bad_settings_raise(clean_env):
    with pytest.raises(ValueError, match="missing --process_id"):
        distributed.resolve("h0:1", 2)
    with pytest.raises(ValueError, match=r"process_id=2 is not in \[0, num_processes=2\)"):
        distributed.resolve("h0:1", 2, 2)
    clean_env.setenv(distributed.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match="DREAMACTOR_NUM_PROCESSES='two' is not an integer"):
        distributed.resolve()


# ---- per-process slices of the sources ----

def test_synthetic_slices_concatenate_to_the_global_batch():
    from dreamactor_jax.data import synthetic

    kw = dict(batch=12, frames=3, height=6, width=10, channels=5, text_len=7, text_dim=11, masked_frames=1)
    full = synthetic.synthetic_batch(3, 17, **kw)
    assert full["target"].shape == (12, 3, 6, 10, 5)
    for count in (2, 3, 4):
        parts = [synthetic.synthetic_batch(3, 17, process_index=i, process_count=count, **kw) for i in range(count)]
        for k, v in full.items():
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), v, err_msg=f"{k} x{count}")
    with pytest.raises(ValueError, match="multiple of process_count=5"):
        synthetic.synthetic_batch(3, 17, process_index=0, process_count=5, **kw)


def test_procedural_slices_concatenate_to_the_global_batch(repo_root):
    from dreamactor_jax.data import sources

    c = config_lib.load_config("configs/stage1_pose.py:tiny")
    c.data.update(batch_size=4, frames=2, height=8, width=8, text_len=3)
    c.data.procedural.num_examples = 11  # 2 global batches and a remainder: every process's epoch is 2 long
    full = sources.procedural_dataset(c, 7, process_index=0, process_count=1)
    parts = [sources.procedural_dataset(c, 7, process_index=i, process_count=2) for i in range(2)]
    for step in (0, 1, 2, 5):  # past the first epoch too
        want = full[step]
        got = [p[step] for p in parts]
        for k, v in want.items():
            assert got[0][k].shape[0] == 2
            np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), v, err_msg=f"{k} step {step}")
