"""Record files, grain pipelines over them and the TFDS builder: round trips, errors, skipping, resume, sharding."""

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import textwrap

import grain
import numpy as np
import pytest
from array_record.python import array_record_module as arm

from dreamactor_jax.codecs import get_codec
from dreamactor_jax.data import ingest, pipeline, records, schema
from dreamactor_jax.data.procedural import dataset as proc
from dreamactor_jax.data.sources import data_section
from dreamactor_jax.data.text import TextEncoder

# Tiny, odd, distinct sizes so a swapped axis cannot hide (pixels: even, for the 2x codec).
T, H, W = 3, 6, 10


def _pixel_example(i: int, t: int = T, h: int = H, w: int = W) -> dict:
    rng = np.random.default_rng(i)
    u8 = lambda *s: rng.integers(0, 256, s, dtype=np.uint8)
    return dict(kind="pixels", target=u8(t, h, w, 3), reference=u8(1, h, w, 3), motion=u8(t, h, w, 3),
                motion_valid=np.ones(t, np.float32), caption=f"clip number {i}", identity_id=i, motion_id=1000 + i)


def _write(tmp_path, n=11, shard_size=4, name="train", **kw):
    exs = [_pixel_example(i, **kw) for i in range(n)]
    return exs, records.write_records(str(tmp_path / name), exs, shard_size)


def _assert_same(a: dict, b: dict):
    """``b`` (read back) holds ``a`` (written) exactly, plus the writer's ``schema_version``."""
    assert set(b) - set(a) <= {"schema_version"} and set(a) <= set(b)
    for k, v in a.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, b[k], err_msg=k)
            assert v.dtype == b[k].dtype, k
        else:
            assert v == b[k], k


@pytest.fixture(autouse=True)
def _fresh_stats():
    records.reset_skip_stats()
    yield


def test_round_trip_pixels_and_latents(tmp_path):
    exs, paths = _write(tmp_path)
    assert [os.path.basename(p) for p in paths] == [f"train-0000{i}-of-00003.array_record" for i in range(3)]
    src = records.RecordSource(str(tmp_path))
    assert len(src) == 11 and src.kind == "pixels" and src.lengths == [4, 4, 3]
    for i in (0, 5, 10):
        _assert_same(exs[i], src[i])
        assert src[i]["schema_version"] == records.SCHEMA_VERSION
    assert str(src.locate(5)).endswith("train-00001-of-00003.array_record record 1")
    lat = dict(kind="latents", target=np.random.rand(T, 3, 5, 7).astype(np.float32),
               reference=np.zeros((1, 3, 5, 7), np.float32), motion=np.ones((T, 3, 5, 7), np.float32),
               motion_valid=np.array([0, 1, 1], np.float32), text=np.ones((4, 13), np.float32),
               text_mask=np.array([1, 1, 0, 0], np.float32), caption="a latent clip")
    records.write_records(str(tmp_path / "lat" / "x"), [lat], 8)
    _assert_same(lat, records.RecordSource(str(tmp_path / "lat"))[0])
    data = records.encode_record(exs[1])
    for bad in (b"junk" * 9, data[:-7], data[:20] + bytes([data[20] ^ 1]) + data[21:]):
        with pytest.raises(records.CorruptRecordError):
            records.decode_record(bad)
    # grain decodes from many threads at once: no decode may fail spuriously (np.load did, via ast).
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(r["identity_id"] == 1 for r in pool.map(records.decode_record, [data] * 400))


def test_schema_errors_name_file_index_and_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        records.RecordSource(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="holds no"):
        records.RecordSource(str(tmp_path))
    with pytest.raises(records.RecordSchemaError, match="'motion'"):
        records.encode_record(dict(_pixel_example(0), motion=np.zeros((T + 1, H, W, 3), np.uint8)))
    good = _pixel_example(0)
    bad_cases = {
        "missing": ({k: v for k, v in good.items() if k != "motion_valid"}, "missing field 'motion_valid'"),
        "shape": (dict(good, target=np.zeros((T, H, W + 2, 3), np.uint8), reference=np.zeros((1, H, W + 2, 3),
                  np.uint8), motion=np.zeros((T, H, W + 2, 3), np.uint8)), "field 'target' has dtype/shape"),
        "version": (dict(good, schema_version=99), "field 'schema_version' is 99"),
    }
    for name, (bad, msg) in bad_cases.items():
        path = str(tmp_path / f"{name}.array_record")
        w = arm.ArrayRecordWriter(path, "group_size:1")
        for r in (good, bad):
            w.write(records.encode_record(r, check=False))
        w.close()
        src = records.RecordSource([path])  # the first record is fine and sets the spec
        with pytest.raises(records.RecordSchemaError, match=rf"{name}\.array_record record 1: {msg}"):
            src[1]


def test_corrupt_records_and_truncated_files_are_skipped_and_counted(tmp_path):
    exs, paths = _write(tmp_path, n=8, shard_size=4)
    # Record 2 of shard 0: a valid ArrayRecord chunk holding a record with one flipped byte (its CRC fails).
    w = arm.ArrayRecordWriter(paths[0], "group_size:1")
    for i in range(4):
        data = bytearray(records.encode_record(exs[i]))
        data[len(data) // 2] ^= 0x01 if i == 2 else 0
        w.write(bytes(data))
    w.close()
    # Record 1 of shard 1: flip a byte of its (incompressible) target pixels inside the file.
    data = bytearray(open(paths[1], "rb").read())
    pos = bytes(data).find(exs[5]["target"].tobytes()[:64])
    assert pos > 0
    data[pos + 10] ^= 0xFF
    open(paths[1], "wb").write(bytes(data))
    # A third, truncated file: its footer is gone.
    trunc = str(tmp_path / "train-truncated.array_record")
    records.write_records(str(tmp_path / "extra"), [_pixel_example(i) for i in range(20, 24)], 4)
    whole = open(str(tmp_path / "extra-00000-of-00001.array_record"), "rb").read()
    open(trunc, "wb").write(whole[: len(whole) // 2])
    os.remove(str(tmp_path / "extra-00000-of-00001.array_record"))

    src = records.RecordSource(str(tmp_path))
    assert len(src) == 8 and records.skip_stats()["bad_files"] == 1
    assert records.skip_stats()["files"][0]["file"] == trunc
    _assert_same(exs[3], src[2])  # replaced by the next readable record, deterministically
    _assert_same(exs[6], src[5])
    _assert_same(exs[3], src[2])
    stats = records.skip_stats()
    assert stats["corrupt_reads"] == 3 and stats["corrupt_records"] == 2
    bad = {(os.path.basename(r["file"]), r["index"]) for r in stats["records"]}
    assert bad == {(os.path.basename(paths[0]), 2), (os.path.basename(paths[1]), 1)}
    # A full epoch of batches keeps its shapes.
    ds = pipeline.records_dataset(src, batch_size=4, seed=1, process_index=0, process_count=1, num_epochs=1)
    assert [b["target"].shape for b in ds] == [(4, T, H, W, 3)] * 2


def test_dataset_deterministic_and_process_shards_partition(tmp_path):
    _write(tmp_path, n=12, shard_size=5)
    src = records.RecordSource(str(tmp_path))
    ids = lambda ds, n: [b["identity_id"].tolist() for b in (ds[i] for i in range(n))]
    a = pipeline.records_dataset(src, batch_size=3, seed=7, process_index=0, process_count=1)
    b = pipeline.records_dataset(str(tmp_path), batch_size=3, seed=7, process_index=0, process_count=1)
    assert ids(a, 8) == ids(b, 8)
    assert ids(a, 8) != ids(pipeline.records_dataset(src, batch_size=3, seed=8, process_index=0, process_count=1), 8)
    first, second = sum(ids(a, 4), []), sum(ids(a, 8)[4:], [])
    assert sorted(first) == sorted(second) == list(range(12)) and first != second  # reshuffled per epoch
    for drop in (True, False):
        seen = [sum(ids(pipeline.records_dataset(src, batch_size=4, seed=3, process_index=p, process_count=2,
                                                 num_epochs=1, drop_remainder=drop), 3), []) for p in (0, 1)]
        assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(12))
    from grain._src.core.sharding import even_split  # what the DataLoader's IndexSampler uses

    for n, p, c, drop in [(12, 1, 2, True), (13, 0, 3, False), (13, 2, 3, False), (13, 2, 3, True)]:
        assert pipeline.shard_interval(n, p, c, drop) == even_split(n, grain.sharding.ShardOptions(p, c, drop))
    with pytest.raises(ValueError, match="multiple of process_count"):
        pipeline.records_dataset(src, batch_size=3, process_index=0, process_count=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_state_resumes_identically(tmp_path, workers):
    _write(tmp_path, n=10, shard_size=4)
    make = lambda: pipeline.records_loader(str(tmp_path), batch_size=4, seed=5, worker_count=workers,
                                           process_index=0, process_count=1)
    it = iter(make())
    _ = [next(it) for _ in range(3)]  # k = 3 (crosses an epoch: 2 batches per epoch)
    state = it.get_state()
    expect = [next(it) for _ in range(4)]
    del it  # stop its workers first: two worker pools on two cores double the test's time
    fresh = iter(make())
    fresh.set_state(state)
    got = [next(fresh) for _ in range(4)]
    for e, g in zip(expect, got):
        np.testing.assert_array_equal(e["target"], g["target"])
        assert e["identity_id"].tolist() == g["identity_id"].tolist()


def test_two_real_processes_read_disjoint_shards(tmp_path, repo_root):
    _write(tmp_path, n=12, shard_size=5)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    script = textwrap.dedent(f"""
        import json, sys, jax
        jax.distributed.initialize(coordinator_address="localhost:{port}", num_processes=2,
                                   process_id=int(sys.argv[1]))
        from dreamactor_jax.data import pipeline
        ds = pipeline.records_dataset({str(tmp_path)!r}, batch_size=4, seed=0, num_epochs=1)
        ids = [int(x) for i in range(len(ds)) for x in ds[i]["identity_id"]]
        print(json.dumps(dict(process=jax.process_index(), count=jax.process_count(), ids=ids)))
        jax.distributed.shutdown()
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONPATH=str(repo_root))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, cwd=str(repo_root), text=True) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    res = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert [r["process"] for r in res] == [0, 1] and all(r["count"] == 2 for r in res)
    assert not set(res[0]["ids"]) & set(res[1]["ids"])
    assert sorted(res[0]["ids"] + res[1]["ids"]) == list(range(12))


def test_to_training_and_config_source(tmp_path):
    cfg = proc.ProceduralConfig(frames=T, height=H, width=W)
    exs = [ingest.procedural_record(proc.make_example("train", i, cfg)) for i in range(4)]
    records.write_records(str(tmp_path / "proc"), exs, 2)
    config = _config(tmp_path)
    codec = get_codec("space_to_depth", spatial_factor=2, latent_channels=16)
    ds = pipeline.config_dataset(config, text_dim=11, codec=codec)
    batch = ds[0]
    schema.validate_batch(batch, schema.batch_shapes(2, T, H // 2, W // 2, 16, 5, 11))
    assert batch["motion_valid"].tolist() == [[0, 1, 1]] * 2 and not batch["motion"][:, 0].any()
    # Latents are the codec's encoding of the stored (uint8) pixels.
    r = records.RecordSource(str(tmp_path))[0]
    one = pipeline.ToTraining(codec, TextEncoder(5, 11, 0), 0).map(r)
    np.testing.assert_allclose(one["target"], codec.encode(records.uint8_to_pixels(r["target"])[None])[0], atol=1e-6)
    np.testing.assert_array_equal(one["text"], TextEncoder(5, 11, 0)(r["caption"])[0])
    config.data.height = H  # pixel records of 6 rows give latents of 3
    with pytest.raises(ValueError, match="config.data wants"):
        pipeline.config_dataset(config, text_dim=11, codec=codec)


def _config(tmp_path):
    import ml_collections

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = data_section(frames=T, height=H // 2, width=W // 2, channels=16, text_len=5, batch_size=2,
                          motion_masked_frames=1)
    c.data.records_dir = str(tmp_path)
    return c


def test_tfds_builder_end_to_end(tmp_path):
    from dreamactor_jax.data import tfds_builder

    cfg = tfds_builder.ProceduralTfdsConfig(name="test", frames=T, height=H, width=W, train_examples=3,
                                            validation_examples=2, test_examples=0, pose_augment_prob=0.0)
    builder = tfds_builder.prepare(str(tmp_path), cfg)
    source = builder.as_data_source(split="train")
    assert len(source) == 3 and len(builder.as_data_source(split="validation")) == 2
    assert len(tfds_builder.data_source(str(tmp_path), "test", "train")) == 3
    pcfg = proc.ProceduralConfig(frames=T, height=H, width=W)
    for i in range(3):
        ex = source[i]
        want = ingest.procedural_record(proc.make_example("train", int(ex["index"]), pcfg))
        for k in ("target", "reference", "motion", "motion_valid"):
            np.testing.assert_array_equal(ex[k], want[k], err_msg=k)
        assert ex["caption"].decode() == want["caption"] and ex["identity_id"] == want["identity_id"]
    codec = get_codec("space_to_depth", spatial_factor=2, latent_channels=16)
    ds = grain.MapDataset.source(source).map(pipeline.ToTraining(codec, TextEncoder(5, 11, 0), 1)).batch(2)
    schema.validate_batch(ds[0], schema.batch_shapes(2, T, H // 2, W // 2, 16, 5, 11))


def test_prefetcher_returns_exactly_the_source_batches_and_raises_on_the_failing_step():
    from dreamactor_jax.data.sources import Prefetcher

    calls = []

    def source(step):
        calls.append(step)
        if step == 5:
            raise ValueError("bad record at step 5")
        return {"x": np.full((2,), step)}

    pf = Prefetcher(source, depth=2, limit=7)
    assert [int(pf.get(i)["x"][0]) for i in range(3)] == [0, 1, 2]
    assert int(pf.get(4)["x"][0]) == 4  # a jump (resume) drops the stale step 3
    with pytest.raises(ValueError, match="step 5"):
        pf.get(5)
    assert int(pf.get(6)["x"][0]) == 6
    pf.close()
    assert max(calls) == 6, "nothing at or past the limit is built"
    off = Prefetcher(source, depth=0)
    assert int(off.get(1)["x"][0]) == 1


def test_training_run_counts_skipped_records_in_metrics_and_summary(tmp_path):
    """A corrupt record in the training data shows up in metrics.jsonl, the summary and the log, not only in a
    warning: real runs must see how much data they lost."""
    from dreamactor_jax import config_lib
    from dreamactor_jax.train import loop

    cfg = proc.ProceduralConfig(frames=3, height=8, width=8)
    exs = [ingest.procedural_record(proc.make_example("train", i, cfg)) for i in range(4)]
    path = str(tmp_path / "data" / "train-00000-of-00001.array_record")
    os.makedirs(os.path.dirname(path))
    w = arm.ArrayRecordWriter(path, "group_size:1")
    for i, ex in enumerate(exs):
        data = bytearray(records.encode_record(ex))
        data[len(data) // 2] ^= 0x01 if i == 1 else 0  # record 1's CRC fails
        w.write(bytes(data))
    w.close()
    c = config_lib.load_config("configs/stage1_pose.py:tiny")
    c.data.update(source="records", records_dir=str(tmp_path / "data"), frames=3, height=4, width=4, batch_size=2,
                  prefetch=0)
    c.train.update(steps=2, log_every=1, checkpoint_every=2, tensorboard=False)
    workdir = tmp_path / "run"
    loop.run(c, str(workdir))
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["data_skips"]["corrupt_records"] == 1 and summary["data_skips"]["bad_files"] == 0
    assert summary["data_skips"]["local_records"][0]["index"] == 1
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["corrupt_records"] == 1
