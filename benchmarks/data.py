"""Examples per second of the procedural character generator, and of grain reading the same examples from records.

  python benchmarks/data.py [--records_n=64 --workers=2]
Generator: each example = clip + pose render + cross-identity clip + its pose render (the full
``make_example``), one process, numpy only: median wall and CPU milliseconds per example and examples/s.
Records (``records``, per size): ``records_n`` examples written as pixel records (``data/records.py``),
then read back by ``pipeline.records_loader`` with ``workers`` worker processes in batches of 8, after a
warm-up batch (worker start-up excluded): examples/s decoding only (``decode``) and decoding plus
``ToTraining`` (space-to-depth codec + caption encoding, the work ``EncodeExample`` does: ``train``);
and ``train`` through ``records_dataset(...)[step]`` in this process, the loop's ``source(step)`` path
(``train_map_dataset``). Prints one JSON line. On a shared 2-core machine the rates move by ~2x run to run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time

from dreamactor_jax.codecs import get_codec
from dreamactor_jax.data import ingest, pipeline, records
from dreamactor_jax.data.procedural import ProceduralConfig, make_example
from dreamactor_jax.data.text import TextEncoder


def measure(cfg: ProceduralConfig, n: int, warmup: int = 3) -> dict:
    for i in range(warmup):
        make_example("train", 10_000_000 + i, cfg)
    wall, cpu = [], []
    for i in range(n):
        w0, c0 = time.perf_counter(), time.process_time()
        make_example("train", i, cfg)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    med = statistics.median(wall)
    return dict(frames=cfg.frames, height=cfg.height, width=cfg.width, examples=n,
                median_ms=round(1e3 * med, 2), median_cpu_ms=round(1e3 * statistics.median(cpu), 2),
                examples_per_s=round(n / sum(wall), 1), examples_per_s_median=round(1.0 / med, 1))


def _loader_rate(files, transform, workers: int, batch: int, batches: int) -> float:
    it = iter(pipeline.records_loader(files, batch_size=batch, seed=0, worker_count=workers, process_index=0,
                                      process_count=1, transform=transform))
    next(it)  # worker start-up and first reads are not the steady state
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch / (time.perf_counter() - t0)
    del it
    return round(rate, 1)


def measure_records(cfg: ProceduralConfig, n: int, workers: int, batch: int = 8, epochs: int = 4) -> dict:
    with tempfile.TemporaryDirectory() as d:
        files = records.write_records(f"{d}/bench", (ingest.procedural_record(make_example("train", i, cfg))
                                                     for i in range(n)), shard_size=max(n // 4, 1))
        mb = sum(len(open(f, "rb").read()) for f in files) / 2**20
        codec = get_codec("space_to_depth", spatial_factor=2, latent_channels=16)
        train = pipeline.ToTraining(codec, TextEncoder(length=512, dim=64), masked_frames=2)
        batches = max(epochs * n // batch, 1)
        ds = pipeline.records_dataset(d, batch_size=batch, process_index=0, process_count=1, transform=train)
        ds[0]
        t0 = time.perf_counter()
        for i in range(1, batches + 1):
            ds[i]
        in_process = round(batches * batch / (time.perf_counter() - t0), 1)
        return dict(frames=cfg.frames, height=cfg.height, width=cfg.width, records=n, workers=workers,
                    kb_per_record=round(1024 * mb / n, 1),
                    decode_examples_per_s=_loader_rate(d, None, workers, batch, batches),
                    train_examples_per_s=_loader_rate(d, train, workers, batch, batches),
                    train_map_dataset_examples_per_s=in_process)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="9x32x32,17x64x64", help="comma-separated TxHxW")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--records_n", type=int, default=64, help="examples written as records (0: skip records)")
    p.add_argument("--workers", type=int, default=2, help="grain worker processes for the records rate")
    a = p.parse_args()
    cases, rec_cases = [], []
    for size in a.sizes.split(","):
        t, h, w = (int(v) for v in size.split("x"))
        cfg = ProceduralConfig(frames=t, height=h, width=w)
        cases.append(measure(cfg, a.n))
        if a.records_n:
            rec_cases.append(measure_records(cfg, a.records_n, a.workers))
    print(json.dumps(dict(benchmark="procedural_data", machine=platform.machine(), cases=cases, records=rec_cases)))


if __name__ == "__main__":
    main()
