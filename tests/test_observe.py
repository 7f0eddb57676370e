"""Watching runs: the progress line and MFU, metric writers (metrics.jsonl always, TensorBoard via clu), the profiler
window, sample previews and the end-of-run summaries, on a 3-step tiny run of the real loop."""

import json

import numpy as np
import pytest

from dreamactor_jax import config_lib
from dreamactor_jax.train import flops, loop, observe

# Small and fast (the chaos test's shapes): the compile, not the steps, is what a test pays for.
FAST = {"data.source": "synthetic", "data.batch_size": 2, "data.frames": 3, "data.height": 8, "data.width": 8}


def _tiny(**train):
    c = config_lib.load_config("configs/stage1_pose.py:tiny")
    for k, v in FAST.items():
        section, field = k.split(".")
        c[section][field] = v
    c.train.update(train)
    return c


def test_peak_flops_by_device_kind():
    assert flops.peak_flops_per_device("TPU v5 lite") == 197e12
    assert flops.peak_flops_per_device("TPU v5") == 459e12  # v5p's device_kind
    assert flops.peak_flops_per_device("TPU v6 lite") == 918e12
    assert flops.peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_flops_per_device("NVIDIA H100 PCIe") == 756e12
    assert flops.peak_flops_per_device("NVIDIA A100-SXM4-80GB") == 312e12
    assert flops.peak_flops_per_device("cpu") is None  # no CPU peak is made up


def test_throughput_and_progress_line():
    cpu = observe.Throughput(train_flops=6e9, tokens=2560, devices=2, device_kind="cpu")
    r = cpu.rates(2.0)
    assert r == {"tokens_per_s": 5120.0, "model_flops_per_s": 6e9}  # per device; no MFU without a peak
    assert "MFU is n/a" in cpu.describe() and "peak_flops_per_device" in cpu.describe()
    line = observe.progress_line(20, 60, {"loss": 0.5, "grad_norm": 1.25}, 2.0, r)
    # The prefix is what benchmarks/chaos.py parses; the rest is for people.
    assert line.startswith("step 20/60 loss 0.5000 grad_norm 1.250 2.00 steps/s 5120 tokens/s")
    assert line.endswith("MFU n/a ETA 20s")
    gpu = observe.Throughput(6e12, 2560, 8, "cpu", peak_override=1e12)
    assert gpu.rates(0.5)["mfu"] == pytest.approx(6e12 * 0.5 / 8e12)
    assert "MFU 37.5%" in observe.progress_line(1, 2, {"loss": 1, "grad_norm": 1}, 0.5, gpu.rates(0.5))
    assert observe.format_seconds(123456.7) == "1d10h17m" and observe.format_seconds(75) == "1m15s"


@pytest.mark.parametrize(
    "value,want",
    [("", None), (None, None), ((), None), ("10:15", (10, 15)), ("7", (7, 7)), ((2, 3), (2, 3)), ([4, 4], (4, 4))],
)
def test_parse_profile_steps(value, want):
    assert observe.parse_profile_steps(value) == want


@pytest.mark.parametrize("bad", ["5:2", "0:3", "a:b", "1:2:3"])
def test_bad_profile_steps_name_the_field(bad):
    with pytest.raises(ValueError, match="config.train.profile_steps"):
        observe.parse_profile_steps(bad)
    c = _tiny(profile_steps=bad)
    with pytest.raises(ValueError, match="config.train.profile_steps"):
        config_lib.validate(c)


def test_summary_table():
    t = observe.summary_table(
        [
            {
                "phase": "stage1",
                "time": 75.2,
                "steps": 500,
                "final loss": 0.12345,
                "outputs": ["a/checkpoints", "a/tensorboard"],
            },
            {"phase": "export", "outputs": ["x"]},
        ]
    )
    lines = t.splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["phase", "time", "steps", "final loss", "outputs"]
    assert "| stage1 | 1m15s | 500   | 0.1235     | a/checkpoints, a/tensorboard |" == lines[2]
    assert lines[3].startswith("| export | -     | -     | -")


def test_metrics_jsonl_without_tensorboard(tmp_path, monkeypatch):
    """No TensorFlow: the run says so once and metrics.jsonl is written as always."""

    def no_tf(logdir):
        raise ImportError("No module named 'tensorflow'")

    monkeypatch.setattr(observe, "create_tensorboard_writer", no_tf)
    notes = []
    log = observe.MetricLog(str(tmp_path), enabled=True, tensorboard=True, say=notes.append)
    log.scalars(1, {"step": 1, "loss": 0.5}, {"train/loss": 0.5})
    log.images(1, {"x": np.zeros((4, 4, 3), np.uint8)})
    log.close()
    assert log.tensorboard_dir is None and "tensorboard: off" in notes[0] and "tensorflow" in notes[0]
    assert [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [{"step": 1, "loss": 0.5}]
    quiet = observe.MetricLog(str(tmp_path / "p1"), enabled=False, tensorboard=True)  # not process 0: writes nothing
    quiet.scalars(1, {"step": 1})
    quiet.close()
    assert not (tmp_path / "p1").exists()


def _events(logdir):
    """{tag: [(step, value or image bytes)]} of the event files under ``logdir`` (tensorboard's own reader)."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    out = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    for t in acc.Tags()["images"]:
        out[t] = [(e.step, e.encoded_image_string) for e in acc.Images(t)]
    for t in acc.Tags()["tensors"]:  # TF2 summaries land as tensors
        out[t] = [(e.step, e.tensor_proto) for e in acc.Tensors(t)]
    return out


def test_tiny_run_writes_everything(tmp_path):
    """3 steps: progress/metrics, a profile of steps 2-3, a preview at step 3, TensorBoard events, summary.json."""
    tf_available = True
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        tf_available = False
    c = _tiny(
        steps=3,
        log_every=1,
        checkpoint_every=3,
        profile_steps="2:3",
        preview_every=3,
        preview_steps=2,
        preview_examples=2,
    )
    out = loop.run(c, str(tmp_path))
    assert out["steps"] == 3 and out["profiled_steps"] == [2, 3] and out["previews"] == 1
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert all(x["model_flops_per_s"] > 0 and x["tokens_per_s"] > 0 and "mfu" not in x for x in lines)  # CPU
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0
    from PIL import Image

    with Image.open(tmp_path / "previews" / "step_000003.gif") as gif:
        # 2 rows of (reference | motion | sample | target), 16 px cells with 1 px borders, zoom 2; 3 frames.
        assert gif.size == (4 * 18 * 2, 2 * 18 * 2) and gif.n_frames == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_loss"] == pytest.approx(lines[-1]["loss"]) and summary["outputs"]["profile"]
    if tf_available:
        events = _events(tmp_path / "tensorboard")
        assert [s for s, _ in events["train/loss"]] == [1, 2, 3]
        assert {"perf/steps_per_s", "perf/model_flops_per_s", "train/grad_norm", "train/lr"} <= set(events)
        assert [s for s, _ in events["preview"]] == [3]
        assert summary["outputs"]["tensorboard"] == str(tmp_path / "tensorboard")
