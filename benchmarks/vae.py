"""Wan VAE encode/decode frames/s, ours (JAX) beside diffusers' AutoencoderKLWan (PyTorch), and peak memory.

  python benchmarks/vae.py --preset=tiny --frames=17 --height=64 --width=64
Both implementations run the same config with the same random weights (torch's init, imported through our
converter) on the same input, in this process, on the CPU (or the current JAX backend). Encode frames/s counts
input frames; decode frames/s counts output frames. Times are medians over ``--repeats`` after a warm-up call
(the JAX compile time is reported separately). Each line carries the max abs difference to diffusers.

Memory (``--memory_frames``): each of chunked (the default, diffusers' 1 + 4 + 4 ... frames) and whole-clip
(one call) encode runs in a fresh subprocess, which encodes once (compiling) and then again while a thread
samples its resident set size every 2 ms: ``rss_growth_mb`` is the peak minus the RSS before that call, taken
after ``malloc_trim``, median of three calls (the input clip is already resident and the compiler's memory is
excluded; ``ru_maxrss`` is no use here, Linux carries the parent's peak across exec). Beside it,
``xla_program_mb`` is XLA's memory analysis of the largest compiled encode program (temporaries + arguments +
outputs). Chunked stays flat as clips get longer; whole-clip grows with the frame count. One JSON line per case.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _xla_mb(vae, x, whole: bool) -> float:
    """Bytes XLA plans for the largest encode program: temporaries + arguments + outputs, in MiB."""
    import jax.numpy as jnp

    def size(args):
        m = vae._encode_step.lower(vae.state, *args).compile().memory_analysis()
        return (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes) / 2**20

    if whole:
        return size((jnp.asarray(x), None))
    _, cache = vae._encode_step(vae.state, jnp.asarray(x[:, :1]), None)
    return max(size((jnp.asarray(x[:, :1]), None)), size((jnp.asarray(x[:, 1 : 1 + vae.chunk_frames]), cache)))


def memory_child(a) -> None:
    """Encodes once to compile, then again while a thread samples the RSS; prints the peaks."""
    from dreamactor_jax.codecs import wan_vae as W
    from dreamactor_jax.codecs import wan_vae_layers as L

    vae = W.WanVAE.random(L.get_preset(a.preset), seed=0)
    x = np.random.default_rng(0).uniform(-1, 1, (a.batch, a.frames, a.height, a.width, 3)).astype(np.float32)
    whole = a.memory_child == "whole_clip"
    xla = _xla_mb(vae, x, whole)
    np.asarray(vae.encode_moments(x, whole_clip=whole))  # compile (its memory is not the encoder's)
    growth, base = [], 0.0
    for _ in range(3):  # the allocator makes one sample noisy: report the median of three
        # Hand freed heap pages back to the OS, so the measured call has to fault in what it needs again.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        base, peak, done = _rss_mb(), [0.0], threading.Event()

        def sample(peak=peak, done=done):
            while not done.is_set():
                peak[0] = max(peak[0], _rss_mb())
                time.sleep(0.002)

        th = threading.Thread(target=sample)
        th.start()
        np.asarray(vae.encode_moments(x, whole_clip=whole))
        done.set()
        th.join()
        growth.append(max(peak[0], base) - base)
    print(
        json.dumps(
            {
                "rss_growth_mb": round(statistics.median(growth), 1),
                "rss_before_mb": round(base, 1),
                "input_mb": round(x.nbytes / 2**20, 1),
                "xla_program_mb": round(xla, 1),
            }
        )
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="Wan VAE preset (tiny | wan2.1)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=17, help="4k+1 input frames")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory_frames", default="17,129", help="clip lengths for the memory cases ('' to skip)")
    p.add_argument("--memory_size", default="128x128", help="HxW of the memory cases")
    p.add_argument("--skip_torch", action="store_true")
    p.add_argument("--memory_child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.memory_child:
        return memory_child(a)

    import jax

    from dreamactor_jax.codecs import wan_vae as W
    from dreamactor_jax.codecs import wan_vae_convert as C
    from dreamactor_jax.codecs import wan_vae_layers as L

    cfg = L.get_preset(a.preset)
    x = np.random.default_rng(0).uniform(-1, 1, (a.batch, a.frames, a.height, a.width, 3)).astype(np.float32)
    common = {
        "benchmark": "vae",
        "preset": a.preset,
        "backend": jax.default_backend(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "batch": a.batch,
        "height": a.height,
        "width": a.width,
    }
    tm = None
    if a.skip_torch:
        vae = W.WanVAE.random(cfg, seed=0)
    else:
        import diffusers
        import torch

        torch.manual_seed(0)
        tm = diffusers.AutoencoderKLWan(**cfg.arch_dict()).eval()
        sd = {k: v.numpy() for k, v in tm.state_dict().items()}
        vae = W.WanVAE(C.build_model(cfg, {e.ours: e.to_ours(sd[e.theirs]) for e in C.name_table(cfg)}))
        common["torch_threads"] = torch.get_num_threads()

    def jax_encode():
        return np.asarray(vae.encode_moments(x))

    t0 = time.perf_counter()
    mom = jax_encode()
    enc_compile = time.perf_counter() - t0
    enc_s = _median_time(jax_encode, a.repeats)
    z = mom[..., : cfg.z_dim]

    def jax_decode():
        return np.asarray(vae.decode_raw(z))

    t0 = time.perf_counter()
    dec = jax_decode()
    dec_compile = time.perf_counter() - t0
    dec_s = _median_time(jax_decode, a.repeats)
    out_frames = dec.shape[1]

    rows = []
    enc = {
        **common,
        "case": "encode",
        "impl": "jax",
        "frames": a.frames,
        "median_s": round(enc_s, 4),
        "frames_per_s": round(a.batch * a.frames / enc_s, 2),
        "compile_s": round(enc_compile - enc_s, 2),
    }
    dec_row = {
        **common,
        "case": "decode",
        "impl": "jax",
        "frames": out_frames,
        "latent_frames": z.shape[1],
        "median_s": round(dec_s, 4),
        "frames_per_s": round(a.batch * out_frames / dec_s, 2),
        "compile_s": round(dec_compile - dec_s, 2),
    }
    if tm is not None:
        xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3)
        zt = torch.from_numpy(np.ascontiguousarray(z)).permute(0, 4, 1, 2, 3)
        with torch.no_grad():
            ref_mu = tm.encode(xt).latent_dist.mean.permute(0, 2, 3, 4, 1).numpy()
            ref_x = tm.decode(zt).sample.permute(0, 2, 3, 4, 1).numpy()
            t_enc = _median_time(lambda: tm.encode(xt), a.repeats)
            t_dec = _median_time(lambda: tm.decode(zt), a.repeats)
        enc["max_abs_diff_vs_torch"] = float(np.abs(z - ref_mu).max())
        dec_row["max_abs_diff_vs_torch"] = float(np.abs(np.clip(dec, -1, 1) - ref_x).max())
        t_enc_row = {
            **common,
            "case": "encode",
            "impl": "torch",
            "frames": a.frames,
            "median_s": round(t_enc, 4),
            "frames_per_s": round(a.batch * a.frames / t_enc, 2),
        }
        t_dec_row = {
            **common,
            "case": "decode",
            "impl": "torch",
            "frames": out_frames,
            "latent_frames": z.shape[1],
            "median_s": round(t_dec, 4),
            "frames_per_s": round(a.batch * out_frames / t_dec, 2),
        }
        enc["jax_over_torch"] = round(t_enc / enc_s, 3)  # > 1: ours is faster
        dec_row["jax_over_torch"] = round(t_dec / dec_s, 3)
        rows += [enc, t_enc_row, dec_row, t_dec_row]
    else:
        rows += [enc, dec_row]
    for r in rows:
        print(json.dumps(r), flush=True)

    mh, mw = (int(v) for v in a.memory_size.lower().split("x"))
    for frames in [int(f) for f in a.memory_frames.split(",") if f.strip()]:
        for mode in ("chunked", "whole_clip"):
            args = [f"--memory_child={mode}", f"--preset={a.preset}", f"--batch={a.batch}", f"--frames={frames}"]
            cmd = [sys.executable, os.path.abspath(__file__), *args, f"--height={mh}", f"--width={mw}"]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            got = json.loads(res.stdout.strip().splitlines()[-1])
            row = {**common, "height": mh, "width": mw, "case": "memory", "mode": mode, "frames": frames, **got}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
