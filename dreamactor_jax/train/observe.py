"""Watching a run: metric writers, the progress line, a profiler window and the end-of-run summary.

What a run writes into its workdir (process 0 only; every other process gets writers that do nothing):

* ``metrics.jsonl``: one JSON object per logged step, written directly (no TensorFlow, always on). It is
  the record that resumed runs keep exact (see ``loop.py``); TensorBoard is a view of it.
* ``tensorboard/``: TensorBoard event files through clu's ``metric_writers`` (``config.train.tensorboard``).
  clu's summary writer needs TensorFlow, imported only here and only when the writer is created (about 2 s);
  without TensorFlow the run says so once and carries on with ``metrics.jsonl``.
* ``profile/``: a ``jax.profiler`` trace of the steps in ``config.train.profile_steps``.

The progress line keeps the ``step N/M loss ... grad_norm ...`` prefix that ``benchmarks/chaos.py`` parses and
adds throughput, model FLOP/s from :mod:`dreamactor_jax.train.flops`, MFU against the device's peak, and ETA.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dreamactor_jax import fs
from dreamactor_jax.config_lib import parse_profile_steps  # noqa: F401  (re-exported: its old home)
from dreamactor_jax.train import flops

TENSORBOARD_DIR = "tensorboard"
PROFILE_DIR = "profile"
SUMMARY_FILE = "summary.json"


# --- metric writers ------------------------------------------------------------------------------------------


def create_tensorboard_writer(logdir: str):
    """clu's default writer for ``logdir`` (asynchronous), importing TensorFlow now.

    Raises:
      ImportError: TensorFlow (which clu's summary writer needs) is not installed.
    """
    # TensorFlow only writes event files here: its start-up INFO lines are noise in a run log, and oneDNN
    # (whose notice is one of them) speeds up TF ops this process never runs.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # never let TF claim an accelerator JAX is using
    from clu import metric_writers

    return metric_writers.create_default_writer(logdir, asynchronous=True)


def _hparam(v: Any) -> Any:
    return v if isinstance(v, bool | int | float | str) else json.dumps(v)


def flat_config(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{'a.b.c': scalar}`` (non-scalars as JSON strings), e.g. for TensorBoard HParams."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = _hparam(v)
    return out


class MetricLog:
    """``metrics.jsonl`` plus (optionally) TensorBoard, written on process 0 only.

    Args:
      workdir: the run's directory.
      enabled: whether this process writes (process 0).
      tensorboard: also write TensorBoard events under ``workdir/tensorboard``.
      say: where notes go (e.g. that TensorBoard is unavailable).
    """

    def __init__(self, workdir: str, *, enabled: bool, tensorboard: bool, say=print):
        self.enabled = enabled
        self.jsonl_path = fs.join(workdir, "metrics.jsonl")
        self.tensorboard_dir = fs.join(workdir, TENSORBOARD_DIR) if enabled and tensorboard else None
        # A local file stays open for appends; a URL (no append) is rewritten per record by fs.append_text.
        self._jsonl = open(self.jsonl_path, "a") if enabled and not fs.is_url(workdir) else None  # noqa: SIM115
        self._writer = None
        if self.tensorboard_dir is not None:
            try:
                self._writer = create_tensorboard_writer(self.tensorboard_dir)
            except ImportError as e:
                say(
                    f"tensorboard: off ({e}; clu's summary writer needs TensorFlow: pip install "
                    f"tensorflow-cpu); metrics.jsonl is still written"
                )
                self.tensorboard_dir = None

    def scalars(self, step: int, record: Mapping[str, Any], tensorboard: Mapping[str, float] | None = None) -> None:
        """Appends ``record`` (which must hold ``step``) to metrics.jsonl; ``tensorboard`` scalars go to the events."""
        if not self.enabled:
            return
        line = json.dumps(dict(record)) + "\n"
        if self._jsonl is None:
            fs.append_text(self.jsonl_path, line)
        else:
            self._jsonl.write(line)
            self._jsonl.flush()
        if self._writer is not None and tensorboard:
            self._writer.write_scalars(step, {k: float(v) for k, v in tensorboard.items() if math.isfinite(v)})

    def images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """(H, W, 3) or (N, H, W, 3) uint8 images to TensorBoard's Images tab."""
        if self._writer is not None:
            self._writer.write_images(step, dict(images))

    def config(self, config_dict: Mapping[str, Any]) -> None:
        """The resolved config as TensorBoard HParams and as text."""
        if self._writer is not None:
            self._writer.write_hparams(flat_config(config_dict))
            self._writer.write_texts(0, {"config": "```\n" + json.dumps(config_dict, indent=2) + "\n```"})

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._writer is not None:
            self._writer.close()  # waits for the asynchronous writes
            self._writer = None


# --- progress ------------------------------------------------------------------------------------------------


def format_seconds(s: float) -> str:
    """123456.7 -> '1d10h17m', 75 -> '1m15s'."""
    if not math.isfinite(s):
        return "?"
    s = int(round(max(s, 0.0)))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h}h{m}m"
    if h:
        return f"{h}h{m}m"
    return f"{m}m{s}s" if m else f"{s}s"


class Throughput:
    """Per-step model FLOPs and the device peak: turns a step rate into tokens/s, FLOP/s, MFU and ETA.

    Args:
      train_flops: model FLOPs of one optimizer step over the global batch (:func:`flops.forward_flops` ``.train``).
      tokens: canvas tokens per step over the global batch.
      devices: devices the step runs on.
      device_kind: ``jax.devices()[0].device_kind``; looked up in :data:`flops.PEAK_FLOPS_BY_KIND`.
      peak_override: peak FLOP/s per device to use instead (``config.train.peak_flops_per_device``; 0: table).
    """

    def __init__(self, train_flops: float, tokens: int, devices: int, device_kind: str, peak_override: float = 0.0):
        self.train_flops, self.tokens, self.devices, self.device_kind = train_flops, tokens, devices, device_kind
        self.peak = (
            float(peak_override) if peak_override and peak_override > 0 else flops.peak_flops_per_device(device_kind)
        )

    def describe(self) -> str:
        """One start-up line saying what MFU is measured against."""
        head = (
            f"throughput: {self.train_flops:.3e} model FLOPs/step (matmuls, 3x forward), {self.tokens} "
            f"tokens/step, {self.devices} x {self.device_kind!r}"
        )
        if self.peak:
            return head + f"; MFU against {self.peak:.3e} FLOP/s per device"
        return head + (
            "; no peak FLOP/s known for this device kind, so MFU is n/a (achieved FLOP/s is shown; set "
            "config.train.peak_flops_per_device for MFU)"
        )

    def rates(self, steps_per_s: float) -> dict[str, float]:
        """tokens_per_s, model_flops_per_s (per device) and, when a peak is known, mfu."""
        out = {
            "tokens_per_s": steps_per_s * self.tokens,
            "model_flops_per_s": steps_per_s * self.train_flops / max(self.devices, 1),
        }
        if self.peak:
            out["mfu"] = flops.mfu(
                self.train_flops, 1.0 / steps_per_s if steps_per_s > 0 else 0.0, self.peak, self.devices
            )
        return out


def progress_line(
    done: int, total: int, metrics: Mapping[str, float], steps_per_s: float, rates: Mapping[str, float]
) -> str:
    """``step 20/60 loss 0.4321 grad_norm 0.812 3.10 steps/s 9920 tokens/s 1.2e+09 FLOP/s/dev MFU n/a ETA 13s``."""
    mfu = rates.get("mfu")
    eta = (total - done) / steps_per_s if steps_per_s > 0 else math.inf
    return (
        f"step {done}/{total} loss {metrics['loss']:.4f} grad_norm {metrics['grad_norm']:.3f} "
        f"{steps_per_s:.2f} steps/s {rates['tokens_per_s']:.0f} tokens/s "
        f"{rates['model_flops_per_s']:.3g} FLOP/s/dev MFU {'n/a' if mfu is None else f'{100 * mfu:.1f}%'} "
        f"ETA {format_seconds(eta)}"
    )


# --- profiling -----------------------------------------------------------------------------------------------


class ProfileWindow:
    """Traces steps ``first..last`` (inclusive, 1-based as logged) with ``jax.profiler`` into ``logdir``.

    Every process traces its own host (a slow host shows up in its own trace); with several processes each
    writes to ``logdir/process_<i>``. A run resumed past ``first`` traces what is left of the window.
    """

    def __init__(
        self, window: tuple[int, int] | None, logdir: str, process_index: int = 0, process_count: int = 1, say=print
    ):
        self.window, self.say, self.active = window, say, False
        self.logdir = logdir if process_count == 1 else fs.join(logdir, f"process_{process_index}")
        self.traced: list[int] = []

    def before(self, step: int) -> None:
        """Call before dispatching the update that produces ``step``."""
        if self.window is None or self.active or not self.window[0] <= step <= self.window[1]:
            return
        import jax

        fs.makedirs(self.logdir)
        jax.profiler.start_trace(self.logdir)
        self.active = True

    def after(self, step: int, outputs: Any) -> None:
        """Call after dispatching ``step``; at the window's last step, waits for ``outputs`` and stops the trace."""
        if not self.active:
            return
        self.traced.append(step)
        if step >= self.window[1]:
            self.stop(outputs)

    def stop(self, outputs: Any = None) -> None:
        if not self.active:
            return
        import jax

        if outputs is not None:
            jax.block_until_ready(outputs)  # the trace must hold the last step's device work
        jax.profiler.stop_trace()
        self.active = False
        self.say(
            f"profile: steps {self.traced[0]}-{self.traced[-1]} traced to {self.logdir} "
            f"(tensorboard --logdir={self.logdir}, Profile tab; or Perfetto: *.trace.json.gz)"
        )


# --- summaries -----------------------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    if isinstance(v, list | tuple):
        return ", ".join(_cell(x) for x in v) or "-"
    return str(v)


def summary_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = ("phase", "time", "steps", "final loss", "outputs")
) -> str:
    """A Markdown table of ``rows`` (missing cells '-'); ``time`` in seconds is shown as e.g. '1m15s'."""
    cells = [
        [
            format_seconds(r[c]) if c == "time" and isinstance(r.get(c), int | float) else _cell(r.get(c))
            for c in columns
        ]
        for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as indented JSON atomically (``fs.write_text``)."""
    fs.write_text(path, json.dumps(obj, indent=2, default=str))
