"""Launching: the cluster scripts' dry runs for a 2-host example (what they would execute, and that each host then
resolves the right multi-host settings), and launch/sample.py end to end on a tiny checkpoint made here."""

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from dreamactor_jax.parallel import distributed

CONFIG = "configs/curriculum.py:tiny"


def _script(repo_root, name, *args, env=None, check=True):
    # The scripts read these (the user's own settings): the test's values are its own, not the runner's.
    own = ("SLURM_", "DREAMACTOR_", "TPU_", "NCCL_", "XLA_FLAGS", "LIBTPU_INIT_ARGS", "CUDA_DEVICE_MAX_CONNECTIONS",
           "XLA_PYTHON_CLIENT_MEM_FRACTION")
    base = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    out = subprocess.run(
        ["bash", str(repo_root / "launch" / name), *args],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "PYTHON": "python", **(env or {})},
    )
    if check:
        assert out.returncode == 0, out.stderr
    return out


def _commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines() if line.strip()]


def _fake_bin(tmp_path, name, body):
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    (d / name).write_text("#!/bin/sh\n" + body)
    (d / name).chmod(0o755)
    return d


def test_local_dry_run_two_processes(repo_root):
    out = _script(
        repo_root,
        "local.sh",
        "--dry_run",
        "--entry=train",
        "--config=configs/stage1_pose.py:tiny",
        "--workdir=/tmp/run",
        "--num_processes=2",
        "--cpu",
        "--devices_per_process=4",
        "--port=9999",
        "--config.train.steps=3",
        "--",
        "--config.data.source=synthetic",
    )
    cmds = _commands(out.stdout)
    base = [
        "env",
        "JAX_PLATFORMS=cpu",
        "XLA_FLAGS=--xla_force_host_platform_device_count=4",
        "python",
        "launch/train.py",
        "--config=configs/stage1_pose.py:tiny",
        "--workdir=/tmp/run",
        "--config.train.steps=3",
        "--config.data.source=synthetic",
        "--coordinator_address=localhost:9999",
        "--num_processes=2",
    ]
    assert cmds == [base + ["--process_id=0"], base + ["--process_id=1"]]
    one = _commands(_script(repo_root, "local.sh", "--dry_run").stdout)
    assert one == [["python", "launch/curriculum.py", f"--config={CONFIG}", "--workdir=runs/curriculum"]]
    bad = _script(repo_root, "local.sh", "--bogus", check=False)
    assert bad.returncode == 2 and "unknown argument --bogus" in bad.stderr


def test_tpu_pod_dry_run_two_hosts(repo_root, tmp_path):
    common = [
        "--dry_run",
        "--project=proj",
        "--zone=us-east5-a",
        "--name=pod",
        "--accelerator_type=v5p-16",
        f"--config={CONFIG}",
        "--workdir=/mnt/shared/run",
        "--config.stage1.train.steps=10",
    ]
    where = ["--zone=us-east5-a", "--project=proj"]
    create = _commands(_script(repo_root, "tpu_pod.sh", "create", *common, "--spot").stdout)
    assert create == [
        [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "create",
            "pod",
            *where,
            "--accelerator-type=v5p-16",
            "--version=v2-alpha-tpuv5",
            "--spot",
        ]
    ]
    setup = _commands(_script(repo_root, "tpu_pod.sh", "setup", *common).stdout)
    assert setup[0][:3] == ["git", "-C", str(repo_root)] and "archive" in setup[0]
    assert setup[1][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in setup[1]
    assert "--worker=all" in setup[2] and "pip install -q -e '.[tpu]'" in setup[2][-1]
    delete = _commands(_script(repo_root, "tpu_pod.sh", "delete", *common).stdout)
    assert delete == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod", *where, "--quiet"]]

    (run,) = _commands(_script(repo_root, "tpu_pod.sh", "run", *common, "--num_hosts=2").stdout)
    assert run[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"] and "--worker=all" in run
    remote = run[-1].removeprefix("--command=")
    assert "DREAMACTOR_NUM_PROCESSES=2" in remote
    assert remote.endswith(
        f"python launch/curriculum.py --config={CONFIG} --workdir=/mnt/shared/run --config.stage1.train.steps=10"
    )
    # Run the remote command as host 1 of 2 would (the metadata server and python faked): it must hand the
    # launcher DREAMACTOR_* settings that resolve to process 1 of 2 with host 0 as coordinator.
    host = tmp_path / "host"
    (host / "dreamactor_jax" / ".venv" / "bin").mkdir(parents=True)
    (host / "dreamactor_jax" / ".venv" / "bin" / "activate").write_text("")
    fake = _fake_bin(
        tmp_path,
        "curl",
        'case "$*" in *agent-worker-number) echo 1;;\n'
        '*worker-network-endpoints) printf "w-0:0:10.0.0.7,w-1:1:10.0.0.8";; *) exit 1;; esac\n',
    )
    _fake_bin(
        tmp_path, "python", 'echo "$DREAMACTOR_COORDINATOR $DREAMACTOR_NUM_PROCESSES $DREAMACTOR_PROCESS_ID $*"\n'
        f'printf "%s\\n%s" "$LIBTPU_INIT_ARGS" "$DREAMACTOR_COMPILATION_CACHE" > {tmp_path}/perf_env\n'
    )
    for num_hosts in ("--num_hosts=2", None):  # explicit, or counted from the metadata server
        (run,) = _commands(_script(repo_root, "tpu_pod.sh", "run", *common, *([num_hosts] if num_hosts else []),
                                   env={"LIBTPU_INIT_ARGS": "--user_flag=1"}).stdout)
        got = subprocess.run(
            ["bash", "-c", run[-1].removeprefix("--command=")],
            capture_output=True,
            text=True,
            env={"HOME": str(host), "PATH": f"{fake}:/usr/bin:/bin"},
            timeout=30,
        )
        assert got.returncode == 0, got.stderr
        coord, n, pid, *argv = got.stdout.split()
        assert (coord, n, pid) == ("10.0.0.7:8476", "2", "1") and argv[0] == "launch/curriculum.py"
        plan = distributed.resolve(
            environ={
                distributed.ENV_COORDINATOR: coord,
                distributed.ENV_NUM_PROCESSES: n,
                distributed.ENV_PROCESS_ID: pid,
            }
        )
        assert plan == distributed.InitPlan("env", "10.0.0.7:8476", 2, 1)
        # One line of flags (libtpu stops at a literal backslash), ours first, the user's own after them.
        libtpu_args, cache = (tmp_path / "perf_env").read_text().split("\n")
        assert libtpu_args.split() == _perf_flags(repo_root, "tpu") + ["--user_flag=1"] and "\\" not in libtpu_args
        assert cache == "/mnt/shared/run/xla_cache"

    (xpk,) = _commands(_script(repo_root, "tpu_pod.sh", "xpk", *common, "--cluster=c1", "--docker_image=img").stdout)
    assert xpk[:3] == ["xpk", "workload", "create"] and "--tpu-type=v5p-16" in xpk and "--cluster=c1" in xpk
    assert xpk[-1].startswith("--command=export LIBTPU_INIT_ARGS=") and xpk[-1].endswith(
        f" && python launch/curriculum.py --config={CONFIG} --workdir=/mnt/shared/run "
        "--config.stage1.train.steps=10"
    )
    assert "megascale" not in xpk[-1]  # one slice
    (xpk2,) = _commands(_script(repo_root, "tpu_pod.sh", "xpk", *common, "--cluster=c1", "--docker_image=img",
                                "--num_slices=2").stdout)
    assert "--megascale_grpc_premap_memory_bytes" in xpk2[-1] and "--num-slices=2" in xpk2
    assert "--workdir=/mnt/shared/run --config.mesh.dcn_data=2 --config.stage1" in xpk2[-1]  # data across slices
    off = _commands(_script(repo_root, "tpu_pod.sh", "xpk", *common, "--cluster=c1", "--docker_image=img",
                            env={"DREAMACTOR_PERF_FLAGS": "0"}).stdout)[0]
    assert "--xla_tpu" not in off[-1] and "DREAMACTOR_COMPILATION_CACHE=/mnt/shared/run/xla_cache" in off[-1]
    # GKE sets TPU_WORKER_HOSTNAMES / TPU_WORKER_ID: detected as a TPU slice, JAX fills in the rest.
    assert distributed.resolve(environ={"TPU_WORKER_HOSTNAMES": "a,b", "TPU_WORKER_ID": "1"}).source == "tpu"
    missing = _script(repo_root, "tpu_pod.sh", "run", "--dry_run", check=False)
    assert missing.returncode == 2 and "--workdir" in missing.stderr


def test_slurm_dry_run_two_nodes(repo_root, tmp_path):
    fake = _fake_bin(
        tmp_path, "scontrol", '[ "$1 $2 $3" = "show hostnames gpu-[01-02]" ] || exit 1\necho gpu-01\necho gpu-02\n'
    )
    env = {
        "PATH": f"{fake}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "gpu-[01-02]",
        "SLURM_NNODES": "2",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_ID": "4242",
        "SLURM_SUBMIT_DIR": str(repo_root),
    }
    out = _script(
        repo_root,
        "gpu_slurm.sbatch",
        "--dry_run",
        f"--config={CONFIG}",
        "--workdir=/shared/run",
        "--config.stage1.train.steps=10",
        env=env,
    )
    assert _commands(out.stdout) == [
        ["export", "XLA_FLAGS=" + " ".join(_perf_flags(repo_root, "gpu"))],
        ["export", "CUDA_DEVICE_MAX_CONNECTIONS=1"],
        ["export", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.90"],
        ["export", "NCCL_PROTO=SIMPLE,LL,LL128"],
        ["export", "DREAMACTOR_COMPILATION_CACHE=/shared/run/xla_cache"],
        ["export", "DREAMACTOR_COORDINATOR=gpu-01:8476"],
        [
            "srun",
            "--kill-on-bad-exit=1",
            f"--chdir={repo_root}",
            "python",
            "launch/curriculum.py",
            f"--config={CONFIG}",
            "--workdir=/shared/run",
            "--config.stage1.train.steps=10",
        ],
    ]
    # What each srun task then resolves: the exported coordinator plus SLURM's own task count and rank.
    task = {distributed.ENV_COORDINATOR: "gpu-01:8476", "SLURM_NTASKS": "2", "SLURM_PROCID": "1"}
    assert distributed.resolve(environ=task) == distributed.InitPlan("env+slurm", "gpu-01:8476")
    single = _script(
        repo_root,
        "gpu_slurm.sbatch",
        "--dry_run",
        "--workdir=/w",
        env={**env, "SLURM_NTASKS": "1", "SLURM_NNODES": "1"},
    )
    assert [c[0] for c in _commands(single.stdout)] == ["export"] * 5 + ["srun"]  # one task: no coordinator
    mine = _commands(_script(repo_root, "gpu_slurm.sbatch", "--dry_run", "--workdir=/w",
                             env={**env, "XLA_FLAGS": "--mine=1", "NCCL_PROTO": "Simple"}).stdout)
    assert mine[0][1].endswith(" --mine=1") and ["export", "NCCL_PROTO=SIMPLE,LL,LL128"] not in mine
    outside = _script(repo_root, "gpu_slurm.sbatch", "--dry_run", "--workdir=/w", check=False)
    assert outside.returncode == 2 and "sbatch" in outside.stderr


def _perf_flags(repo_root, which: str) -> list[str]:
    """launch/perf_flags.sh's flags: 'tpu' (with the offload ones, as tpu_pod.sh uses them) or 'gpu'."""
    call = "dreamactor_tpu_args offload" if which == "tpu" else "dreamactor_gpu_flags"
    out = subprocess.run(["bash", "-c", f"source launch/perf_flags.sh && {call}"], cwd=repo_root,
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


_TPU_FLAG_PROBE = """
import os, sys
os.environ["LIBTPU_INIT_ARGS"] = sys.argv[1]
from dreamactor_jax.train import aot
print("devices", len(aot.topology_devices("v5p:2x2x1")))
"""


def test_perf_flags_are_known_to_the_installed_xla_and_libtpu(repo_root):
    """An unknown flag aborts XLA at start: every recommended flag must parse with the pinned jaxlib / libtpu."""
    pytest.importorskip("libtpu")
    tpu = subprocess.run(["bash", "-c", "source launch/perf_flags.sh && dreamactor_tpu_args offload multislice"],
                         cwd=repo_root, capture_output=True, text=True, check=True).stdout.strip()
    gpu = " ".join(_perf_flags(repo_root, "gpu"))
    assert len(tpu.split()) >= 10 and len(gpu.split()) >= 8

    def tpu_ok(args):
        return subprocess.run([sys.executable, "-c", _TPU_FLAG_PROBE, args], cwd=repo_root, capture_output=True,
                              text=True, timeout=180)

    def gpu_ok(flags):  # GPU flags live in XLA's debug options, which the CPU jaxlib parses too
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
        return subprocess.run([sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"],
                              cwd=repo_root, env=env, capture_output=True, text=True, timeout=120)

    good = tpu_ok(tpu)
    assert good.returncode == 0 and "devices 4" in good.stdout, good.stderr[-2000:]
    assert gpu_ok(gpu).returncode == 0
    # ... and the probes do catch an unknown flag
    assert "Unknown command line flag" in tpu_ok(tpu + " --xla_tpu_no_such_flag=true").stderr
    assert gpu_ok(gpu + " --xla_gpu_no_such_flag=true").returncode != 0


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, repo_root):
    """A tiny stage-1 checkpoint (random init, as a 0-step run saves it) plus a pose .npz, an mp4 and a PNG."""
    from PIL import Image

    from dreamactor_jax import config_lib
    from dreamactor_jax.animate import to_uint8
    from dreamactor_jax.data import sources, video_io
    from dreamactor_jax.data.procedural import make_example
    from dreamactor_jax.models.build import init_params, model_config
    from dreamactor_jax.train import checkpoint

    d = tmp_path_factory.mktemp("sample")
    c = config_lib.load_config("configs/stage1_pose.py:tiny")
    mcfg = model_config(c.model)
    _, params = init_params(mcfg, 0)
    mngr = checkpoint.manager(str(d / "run" / "checkpoints"), async_save=False)
    checkpoint.save(mngr, 1, params=params, model_cfg=mcfg, config=json.loads(c.to_json_best_effort()))
    mngr.close()
    ex = make_example("test", 0, sources.procedural_config(c, "test"))
    Image.fromarray(to_uint8(ex["cross_reference"])).save(d / "ref.png")
    np.savez(d / "pose.npz", **{k: ex[k] for k in ("keypoints", "parents", "joint_roles", "keypoint_mask")})
    video_io.write_video(str(d / "drive.mp4"), to_uint8(ex["cross_pose_video"]), 8)
    return d


def test_sample_cli_from_checkpoint(tiny_checkpoint, repo_root):
    from PIL import Image

    from dreamactor_jax.data import video_io

    d = tiny_checkpoint
    cmd = [
        sys.executable,
        "launch/sample.py",
        f"--weights={d / 'run'}",
        f"--reference={d / 'ref.png'}",
        f"--driving={d / 'pose.npz'}",
        f"--out={d / 'a.mp4'}",
        f"--out={d / 'a.gif'}",
        "--steps=2",
        "--layout=side_by_side",
        "--zoom=2",
    ]
    out = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.splitlines()[-1])
    assert r["weights"] == "checkpoint" and r["frames"] == 5 and (r["height"], r["width"]) == (32, 32)
    frames = video_io.read_video(str(d / "a.mp4"))
    assert frames.shape == (5, 2 * 34, 2 * 3 * 34, 3)  # reference | driving | animation, 1 px borders, zoom 2
    with Image.open(d / "a.gif") as gif:
        assert gif.size == (2 * 3 * 34, 2 * 34) and gif.n_frames == 5
    # Frame 0 of the animation is the reference, exactly given (up to codec round trip and GIF/H.264 coding).
    with Image.open(d / "a.gif") as gif:
        first = np.asarray(gif.convert("RGB"))[2:66, 2 * 2 * 34 + 2 : 2 * 2 * 34 + 66]
    ref = np.asarray(Image.open(d / "ref.png")).repeat(2, 0).repeat(2, 1)
    assert np.abs(first.astype(int) - ref.astype(int)).mean() < 8


def test_sample_from_export_and_video(tiny_checkpoint):
    """An exported diffusers directory (which carries no run config) animated by an mp4 pose video."""
    from dreamactor_jax import animate, config_lib
    from dreamactor_jax.convert import export

    d = tiny_checkpoint
    export.export_checkpoint(str(d / "run" / "checkpoints"), str(d / "export"), dtype="fp32")
    with pytest.raises(ValueError, match="holds no run config"):
        animate.animate_files(str(d / "export"), str(d / "ref.png"), str(d / "drive.mp4"), [str(d / "b.gif")])
    cfg = config_lib.load_config("configs/stage1_pose.py:tiny").to_dict()
    kw = dict(run_config=cfg, sampler={"steps": 2}, seed=3)
    r = animate.animate_files(str(d / "export"), str(d / "ref.png"), str(d / "drive.mp4"), [str(d / "b.gif")], **kw)
    assert r["weights"] == "diffusers" and r["frames"] == 5 and os.path.getsize(d / "b.gif") > 0
    # The same weights from the checkpoint give the same animation.
    r2 = animate.animate_files(str(d / "run"), str(d / "ref.png"), str(d / "drive.mp4"), [str(d / "c.gif")], **kw)
    assert r2["weights"] == "checkpoint"
    assert (d / "b.gif").read_bytes() == (d / "c.gif").read_bytes()
    with pytest.raises(ValueError, match="unknown driving file type"):
        animate.driving_frames(str(d / "ref.png"), 32, 32)
