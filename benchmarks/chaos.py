"""Chaos: kill a training run at random steps, resume it each time, and check it stays bit-identical.

  python benchmarks/chaos.py --n=10                  # 10 SIGKILLs at random steps, 10 resumes
  python benchmarks/chaos.py --n=6 --signal=mixed    # alternate SIGKILL and SIGTERM (preemption)

One uninterrupted reference run (every checkpoint kept) and one run that is killed
``n`` times at random steps (after the child prints a step's line, plus a random
delay, so kills also land inside async checkpoint saves) and restarted with the
same command line. A resume is exact when, at the end of the segment that follows
it, the logged (step, loss, grad norm) lines are a prefix of the reference's and
the params of the newest step both runs saved are equal bit for bit; the
last segment must also end with the reference's final params and whole log.
Prints one line per resume and then ``K of N resumes exact``. Slow (a process
start per segment); tests/test_reliability.py runs it with small N.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/stage1_pose.py:tiny"
# Small and fast on CPU: the synthetic source (index-based like every source), a checkpoint every 2 steps.
FAST = {"data.source": "synthetic", "train.steps": 12, "train.checkpoint_every": 2, "train.log_every": 1,
        "data.batch_size": 2, "data.frames": 3, "data.height": 8, "data.width": 8}
_STEP_LINE = re.compile(r"^step (\d+)/\d+ ")


def train_command(workdir: str | os.PathLike, overrides: dict, config: str = CONFIG) -> list[str]:
    """The launcher command line for ``overrides`` ({'train.steps': 12, ...})."""
    return [sys.executable, str(ROOT / "launch" / "train.py"), f"--config={config}", f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in overrides.items())]


def child_env(cache_dir: str | os.PathLike | None = None) -> dict:
    """Environment for child runs: CPU, and a shared persistent compilation cache so restarts skip compiling."""
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    if cache_dir is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@dataclasses.dataclass
class Segment:
    returncode: int
    output: str
    signalled_after: int | None  # the step whose line triggered the signal, None if it ran to its end
    last_step: int | None  # the last step line seen


def run_segment(cmd: list[str], *, env: dict, signal_after: int | None = None, sig: int = signal.SIGKILL,
                delay: float = 0.0, timeout: float = 600.0, on_line=None) -> Segment:
    """Runs ``cmd``; once it prints the line of step ``signal_after`` (or later), waits ``delay`` s and sends ``sig``.

    ``on_line(line, proc)`` (optional) sees every output line, e.g. to break something mid-run.
    """
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    lines, sent, last = [], None, None
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line, proc)
            m = _STEP_LINE.match(line)
            if m:
                last = int(m.group(1))
                if sent is None and signal_after is not None and last >= signal_after:
                    if delay:
                        time.sleep(delay)
                    if proc.poll() is None:
                        proc.send_signal(sig)
                        sent = last
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"{cmd} ran past {timeout} s:\n{''.join(lines[-40:])}")
        rc = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Segment(rc, "".join(lines), sent, last)


def logged(workdir: str | os.PathLike) -> list[tuple[int, float, float]]:
    """(step, loss, grad norm) of every whole line of ``workdir/metrics.jsonl``."""
    out = []
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill; the resumed run drops it
        out.append((int(m["step"]), m["loss"], m["grad_norm"]))
    return out


def params_at(workdir: str | os.PathLike, step: int | None = None) -> dict:
    """Host copies of a checkpoint's params (newest step by default)."""
    import jax
    import numpy as np

    from dreamactor_jax.train import checkpoint

    tree = checkpoint.restore_item(os.path.join(workdir, "checkpoints"), "params", step=step)
    return jax.tree.map(np.asarray, tree)


def bitwise_equal(a, b) -> bool:
    import jax
    import numpy as np

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return (jax.tree.structure(a) == jax.tree.structure(b) and len(la) == len(lb)
            and all(x.dtype == y.dtype and x.shape == y.shape and np.asarray(x).tobytes() == np.asarray(y).tobytes()
                    for x, y in zip(la, lb)))


def finalized(workdir: str | os.PathLike) -> list[int]:
    """Committed checkpoint steps of a run, newest first."""
    from dreamactor_jax.train import checkpoint

    return checkpoint.finalized_steps(os.path.join(workdir, "checkpoints"))


def latest_step(workdir: str | os.PathLike) -> int | None:
    steps = finalized(workdir)
    return steps[0] if steps else None


def reference_run(workdir: str | os.PathLike, overrides: dict, env: dict, every_step: bool = False) -> Segment:
    """The uninterrupted run, keeping every checkpoint so resume points can be compared.

    ``every_step`` saves at every step as well: preemption saves land between the regular ones
    (the cadence does not change the numbers).
    """
    extra = {"train.keep_checkpoints": 0, **({"train.checkpoint_every": 1} if every_step else {})}
    seg = run_segment(train_command(workdir, {**overrides, **extra}), env=env)
    if seg.returncode != 0:
        raise RuntimeError(f"reference run failed (rc {seg.returncode}):\n{seg.output[-4000:]}")
    return seg


def chaos(n: int, root: str | os.PathLike, *, overrides: dict | None = None, seed: int = 0, signals: str = "kill",
          env: dict | None = None, reference: str | os.PathLike | None = None, log=print) -> dict:
    """Kills and resumes one run ``n`` times; returns {'exact': k, 'n': n, 'final_exact': bool, 'resumes': [...]}.

    Args:
      n: number of kills (each followed by a resume).
      root: scratch directory for the runs.
      overrides: config overrides (default :data:`FAST`).
      seed: picks the kill steps and delays.
      signals: 'kill' (SIGKILL), 'term' (SIGTERM: preemption, must exit 0) or 'mixed' (alternating).
      env: child environment (default :func:`child_env` with a cache under ``root``).
      reference: an existing reference workdir made with the same overrides (else one is run).
      log: where progress lines go.
    """
    overrides = dict(FAST if overrides is None else overrides)
    root = Path(root)
    env = env or child_env(root / "jax_cache")
    steps = int(overrides["train.steps"])
    if reference is None:
        reference = root / "reference"
        reference_run(reference, overrides, env, every_step=signals != "kill")
    ref_log = logged(reference)
    rng = random.Random(seed)
    # Kill points spread over the whole run; one at or before the restored step kills right after the restart.
    points = sorted(rng.randint(1, steps - 1) for _ in range(n))
    work = root / "chaos"
    cmd = train_command(work, overrides)
    resumes, start = [], 0
    for r in range(n + 1):
        final = r == n
        sig = signal.SIGKILL if signals == "kill" or (signals == "mixed" and r % 2 == 0) else signal.SIGTERM
        kill_at = None if final else max(points[r], min(start + 1, steps - 1))
        seg = run_segment(cmd, env=env, signal_after=kill_at, sig=sig, delay=0.0 if final else rng.uniform(0, 0.3))
        expected_rc = 0 if final or sig == signal.SIGTERM or seg.signalled_after is None else -signal.SIGKILL
        ok_rc = seg.returncode == expected_rc
        if r > 0:  # this segment began with resume r
            got = logged(work)
            ref_steps = set(finalized(reference))
            newest = next((x for x in finalized(work) if x in ref_steps), None)  # newest step both runs saved
            ok_log = got == ref_log[: len(got)] and (not final or got == ref_log)
            # None: killed again before its first save committed; only the log can be compared then.
            ok_params = newest is None or bitwise_equal(params_at(work, newest), params_at(reference, newest))
            exact = ok_rc and ok_log and ok_params
            resumes.append(dict(resume=r, from_step=start, through_step=newest, exact=exact, rc=seg.returncode,
                                log_ok=ok_log, params_ok=ok_params))
            through = f"step {newest}" if newest is not None else f"the log only (no checkpoint yet; {len(got)} lines)"
            log(f"resume {r}: from step {start}, checked through {through}: "
                f"{'exact' if exact else f'NOT exact (rc {seg.returncode}, log {ok_log}, params {ok_params})'}")
            if not exact and not ok_rc:
                log(seg.output[-3000:])
        elif not ok_rc:
            raise RuntimeError(f"first segment: rc {seg.returncode}, expected {expected_rc}:\n{seg.output[-3000:]}")
        if not final:
            log(f"segment {r + 1}: {signal.Signals(sig).name} after step {seg.signalled_after} "
                f"(asked {kill_at}); rc {seg.returncode}")
        start = latest_step(work) or 0
    final_exact = bool(resumes) and resumes[-1]["exact"] and logged(work) == ref_log and bitwise_equal(
        params_at(work), params_at(reference, steps))
    k = sum(x["exact"] for x in resumes)
    log(f"{k} of {n} resumes exact")
    return {"exact": k, "n": n, "final_exact": final_exact, "resumes": resumes, "reference": str(reference),
            "workdir": str(work)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10, help="kills (each followed by a resume)")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--signal", default="kill", choices=["kill", "term", "mixed"])
    p.add_argument("--workdir", default=None, help="scratch dir (default: a temporary one, removed at the end)")
    a = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # this process only reads checkpoints
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax warns on every read-only manager
    root = a.workdir or tempfile.mkdtemp(prefix="chaos-")
    try:
        out = chaos(a.n, root, overrides={**FAST, "train.steps": a.steps}, seed=a.seed, signals=a.signal)
    finally:
        if a.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if out["exact"] == out["n"] and out["final_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
