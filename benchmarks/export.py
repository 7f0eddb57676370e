"""Peak host memory and time of exporting an Orbax checkpoint to bf16 diffusers shards.

  python benchmarks/export.py                      # 8-layer Wan2.1-1.3B (397M params), all layouts
  python benchmarks/export.py --layout=layers --num_layers=8 --max_shard_size=200MB

Builds the model's params with ``jit(init, out_shardings=...)`` over 8 simulated CPU devices, saves them
as our checkpoint, then exports them in a separate process (so its peak RSS is the export's alone, imports
included) and prints one JSON line per layout. Orbax writes one zarr chunk per device shard, and the
chunking decides what export can read at a time:

  layers  block params sharded over the layer axis: one chunk per layer, read one layer at a time
  fsdp    sharded over the last axis: chunks span every layer, read per layer (re-decoding the chunks)
  single  one device, unsharded: one chunk per array, each stacked array read whole once

``+lc`` layouts save the block params with ``SaveArgs(shard_axes=(0,))`` (one zarr chunk per layer whatever
the sharding): a stand-in for that option in ``train/checkpoint.save``, which makes every layout read per layer.
``--compare_restore`` adds the same measurement for a plain Orbax restore of the whole item.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

LAYOUTS = ("layers", "fsdp", "single", "fsdp+lc", "single+lc")


def _peak_rss() -> int:
    """Peak resident set size of this process in bytes (VmHWM; ru_maxrss as a fallback)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(a) -> None:
    """Runs in its own process: one save, export or restore, reporting JSON (time and peak RSS)."""
    if a.mode == "save":
        from dreamactor_jax.models import get_preset

        cfg = get_preset(a.preset, num_layers=a.num_layers, param_dtype="float32")
        print(json.dumps({"params": save_checkpoint(cfg, a.layout, a.checkpoint)}))
        return
    from dreamactor_jax.convert import export
    from dreamactor_jax.train import checkpoint as ckpt_lib

    rss_imports = _peak_rss()
    t0 = time.perf_counter()
    if a.mode == "restore":  # the naive alternative: the whole item onto one device (host memory on CPU)
        import jax

        from dreamactor_jax.models.build import abstract_model, split_params

        cfg = ckpt_lib.model_config_from_meta(ckpt_lib.read_meta(a.checkpoint))
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = ckpt_lib.abstract_like(split_params(abstract_model(cfg))[1])
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), target)
        out = {"leaves": len(jax.tree.leaves(ckpt_lib.restore_item(a.checkpoint, "params", target)))}
    else:
        out = export.export_checkpoint(a.checkpoint, a.out, weights="params", dtype=a.dtype,
                                       max_shard_size=a.max_shard_size)
        out = {"bytes_written": out["file_bytes"], "shards": len(out["files"])}
    print(json.dumps({**out, "wall_s": round(time.perf_counter() - t0, 2), "peak_rss_bytes": _peak_rss(),
                      "rss_after_imports_bytes": rss_imports}))


def save_checkpoint(cfg, layout: str, path: str) -> int:
    """Initialises sharded params in place and saves them; returns the parameter count."""
    import jax
    import orbax.checkpoint as ocp

    from dreamactor_jax.models.build import abstract_model, count_params, init_params, split_params
    from dreamactor_jax.train import checkpoint as ckpt_lib

    layout, _, lc = layout.partition("+")
    _, abstract = split_params(abstract_model(cfg))
    if layout == "single":
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
    else:
        mesh = jax.make_mesh((8,), ("fsdp",))

        def spec(path, a):
            if layout == "layers" and path[0].key == "blocks" and a.shape[0] % 8 == 0:
                return jax.NamedSharding(mesh, jax.P("fsdp"))
            if layout == "fsdp" and a.shape[-1] % 8 == 0:
                return jax.NamedSharding(mesh, jax.P(*[None] * (a.ndim - 1), "fsdp"))
            return jax.NamedSharding(mesh, jax.P())
        shardings = jax.tree_util.tree_map_with_path(spec, abstract)
    _, params = init_params(cfg, seed=0, shardings=shardings)
    mngr = ckpt_lib.manager(path, async_save=False)
    if lc:  # what checkpoint.save would do given save_args (same items and meta)
        save_args = jax.tree_util.tree_map_with_path(
            lambda p, _: ocp.SaveArgs(shard_axes=(0,) if p[0].key == "blocks" else ()), params)
        meta = {"step": 0, "kind": "import", "model": ckpt_lib.model_meta(cfg)}
        mngr.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(params, save_args=save_args),
                                             meta=ocp.args.JsonSave(meta)))
    else:
        ckpt_lib.save(mngr, 0, params=params, model_cfg=cfg, kind="import")
    mngr.wait_until_finished()
    return count_params(params)


def _run_child(*args, devices: int = 1) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *args], capture_output=True,
                         text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="wan2.1-t2v-1.3b")
    p.add_argument("--num_layers", type=int, default=8)
    p.add_argument("--layout", default="all", choices=("all", *LAYOUTS))
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--max_shard_size", default="200MB")
    p.add_argument("--workdir", default=None, help="where to write (default: a temp dir, removed after)")
    p.add_argument("--compare_restore", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="export", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a)
    work = a.workdir or tempfile.mkdtemp(prefix="export_bench_")
    try:
        for layout in (LAYOUTS if a.layout == "all" else (a.layout,)):
            ckpt, out = os.path.join(work, f"ckpt_{layout}"), os.path.join(work, f"out_{layout}")
            shutil.rmtree(ckpt, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            n = _run_child("--mode", "save", "--layout", layout, "--preset", a.preset, "--num_layers",
                           str(a.num_layers), "--checkpoint", ckpt, devices=8)["params"]
            r = _run_child("--checkpoint", ckpt, "--out", out, "--dtype", a.dtype, "--max_shard_size",
                           a.max_shard_size)
            fp32 = 4 * n
            line = {"benchmark": "export", "preset": a.preset, "num_layers": a.num_layers, "layout": layout,
                    "params": n, "dtype": a.dtype, "max_shard_size": a.max_shard_size, **r, "fp32_bytes": fp32,
                    "peak_rss_over_fp32": round(r["peak_rss_bytes"] / fp32, 3)}
            if a.compare_restore:
                rr = _run_child("--mode", "restore", "--checkpoint", ckpt)
                line["orbax_full_restore_peak_rss_bytes"] = rr["peak_rss_bytes"]
                line["orbax_full_restore_over_fp32"] = round(rr["peak_rss_bytes"] / fp32, 3)
            print(json.dumps(line), flush=True)
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(ckpt, ignore_errors=True)
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
