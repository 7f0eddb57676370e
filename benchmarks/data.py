"""Examples per second of the procedural character generator (one process, numpy only).

  python benchmarks/data.py
Each example = clip + pose render + cross-identity clip + its pose render (the full ``make_example``).
Prints one JSON line with a case per size (9x32x32 and 17x64x64 by default): median wall and CPU
milliseconds per example and examples/s (wall).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

from dreamactor_jax.data.procedural import ProceduralConfig, make_example


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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="9x32x32,17x64x64", help="comma-separated TxHxW")
    p.add_argument("--n", type=int, default=100)
    a = p.parse_args()
    cases = []
    for size in a.sizes.split(","):
        t, h, w = (int(v) for v in size.split("x"))
        cases.append(measure(ProceduralConfig(frames=t, height=h, width=w), a.n))
    print(json.dumps(dict(benchmark="procedural_data", machine=platform.machine(), cases=cases)))


if __name__ == "__main__":
    main()
