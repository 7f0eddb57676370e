"""Serve an exported model from PyTorch: diffusers' WanTransformer3DModel plus our flow-matching sampler in torch.

  python launch/convert.py export --checkpoint=runs/curriculum/stage2/checkpoints --out=/tmp/export --dtype=fp32
  python examples/serve_torch.py --export=/tmp/export --config=configs/curriculum.py:tiny --steps=12 \
      --out=/tmp/torch.gif --compare      # also run the JAX sampler on the same noise; print the difference

The exported directory is loaded with ``WanTransformer3DModel.from_pretrained`` and sampled by
:func:`torch_sample`, a line-by-line PyTorch port of ``dreamactor_jax/diffusion/sampler.py``: the in-context
canvas (noisy ⊕ 4 mask channels ⊕ conditioning; reference at frame 0 on the left, the motion on the right),
the given regions reset each step (``noised``: to their noised ground truth with the sample's own noise;
``clean``: fed clean with per-token timestep 0), Wan's timestep shift, text CFG in one batched call, and
the Euler and UniPC-style predictor-corrector steps. Conditioning (codec latents, the tiny text encoder's
caption embeddings) and the initial noise are made once in numpy and handed to both samplers.

One difference is handled here rather than in the model: our DiT masks padded text tokens in cross-attention,
diffusers' Wan attends to every token it is given. Feeding diffusers only each caption's real tokens (the
text encoder pads at the end) computes the same attention exactly.

Inputs default to a held-out procedural test pair (``--reference``/``--driving`` take files, as
``launch/sample.py`` does). Prints one JSON line; with ``--compare``, ``max_abs_diff`` between the torch and
JAX latents. tests/test_serve_torch.py asserts they agree.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

SAMPLERS = ("euler", "ab2", "unipc")  # "unipc" = "ab2" (AB2 predictor + trapezoid corrector), as in JAX


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def schedule(steps: int, shift: float) -> torch.Tensor:
    """σ_0 = 1 > ... > σ_steps = 0, shifted (as ``sampler.schedule``)."""
    return shift_sigma(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32), shift)


def canvas_parts(reference_b1hwc: torch.Tensor, motion_bthwc: torch.Tensor, valid_bt: torch.Tensor):
    """(conditioning canvas, 4-channel mask canvas, ground truth of the given regions), each (B,T,H,2W,·)."""
    b, t, h, w, c = motion_bthwc.shape
    motion = motion_bthwc * valid_bt[:, :, None, None, None]
    left = torch.cat([reference_b1hwc, torch.zeros(b, t - 1, h, w, c)], dim=1)
    cond = torch.cat([left, motion], dim=3)
    left_t = torch.zeros(b, t)
    left_t[:, 0] = 1.0
    mask = torch.cat(
        [left_t[:, :, None, None, None].expand(b, t, h, w, 4), valid_bt[:, :, None, None, None].expand(b, t, h, w, 4)],
        dim=3,
    )
    return cond, mask, torch.cat([left, motion], dim=3)


def token_given(mask_bthwm: torch.Tensor, patch_size) -> torch.Tensor:
    """(B, N): a token is given when its whole patch is; tokens row-major over (T', H', 2W') as diffusers flattens."""
    b, t, h, w, _ = mask_bthwm.shape
    pt, ph, pw = patch_size
    g = (mask_bthwm[..., 0] > 0).reshape(b, t // pt, pt, h // ph, ph, w // pw, pw)
    return g.all(dim=6).all(dim=4).all(dim=2).reshape(b, -1)


def _model_call(model, x_bthwc, t, text_ble, text_mask_bl):
    """diffusers' model on channels-last input, each caption cut to its real tokens (see the module docstring)."""
    lengths = text_mask_bl.sum(dim=1).round().long().tolist()
    out = torch.empty(x_bthwc.shape[:-1] + (model.config.out_channels,), dtype=x_bthwc.dtype)
    for n in sorted(set(lengths)):
        idx = torch.tensor([i for i, m in enumerate(lengths) if m == n])
        if n == 0:
            raise ValueError("a caption with no tokens: diffusers' Wan cannot attend to an empty context")
        v = model(x_bthwc[idx].permute(0, 4, 1, 2, 3), t[idx], text_ble[idx, :n], return_dict=False)[0]
        out[idx] = v.permute(0, 2, 3, 4, 1)
    return out


@torch.no_grad()
def torch_sample(
    model,
    reference_b1hwc,
    motion_bthwc,
    valid_bt,
    text_ble,
    text_mask_bl,
    noise_bthwc,
    *,
    method: str = "unipc",
    steps: int = 20,
    shift: float = 3.0,
    guidance: float = 1.0,
    given_region: str = "noised",
) -> np.ndarray:
    """The target latents (B,T,H,W,C) for these conditions from ``noise_bthwc`` (B,T,H,2W,C): numpy in, numpy out."""
    if method not in SAMPLERS:
        raise ValueError(f"method must be one of {SAMPLERS}, got {method!r}")
    f = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))
    ref, mot, valid, text, tmask, noise = map(
        f, (reference_b1hwc, motion_bthwc, valid_bt, text_ble, text_mask_bl, noise_bthwc)
    )
    b = mot.shape[0]
    cond, mask, x0_given = canvas_parts(ref, mot, valid)
    given = mask[..., :1] > 0
    tok_given = token_given(mask, model.config.patch_size)
    sigmas = schedule(steps, shift)
    use_cfg = guidance != 1.0

    def velocity(x, sigma):
        if given_region == "clean":
            x = torch.where(given, x0_given, x)
            ts = torch.where(tok_given, torch.zeros(()), sigma * 1000.0)
        else:
            x = torch.where(given, (1.0 - sigma) * x0_given + sigma * noise, x)
            ts = torch.full((b,), float(sigma * 1000.0))
        x_in = torch.cat([x, mask, cond], dim=-1)
        if not use_cfg:
            return _model_call(model, x_in, ts, text, tmask)
        v = _model_call(
            model,
            torch.cat([x_in, x_in]),
            torch.cat([ts, ts]),
            torch.cat([text, torch.zeros_like(text)]),
            torch.cat([tmask, tmask]),
        )
        return v[b:] + guidance * (v[:b] - v[b:])

    x, v_prev, x_prev, h_prev = noise, torch.zeros_like(noise), torch.zeros_like(noise), 0.0
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        hstep = s_next - s
        v = velocity(x, s)
        if method in ("ab2", "unipc"):
            if i > 0:  # corrector of the previous step, now that v at its endpoint is known (trapezoid)
                x = x_prev + 0.5 * h_prev * (v_prev + v)
            ratio = hstep / (h_prev if h_prev != 0 else 1.0) if i > 0 else 0.0
            v_eff = v + 0.5 * ratio * (v - v_prev)
        else:
            v_eff = v
        x, v_prev, x_prev, h_prev = x + hstep * v_eff, v, x, hstep
    x = torch.where(given, x0_given, x)
    return x[:, :, :, : x.shape[3] // 2].numpy()


def load_model(export_dir: str):
    """``WanTransformer3DModel.from_pretrained`` in fp32; raises if any key is missing, unexpected or mis-shaped."""
    import diffusers

    model, info = diffusers.WanTransformer3DModel.from_pretrained(
        export_dir, torch_dtype=torch.float32, output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise ValueError(f"diffusers did not load {export_dir} cleanly: {bad}")
    return model.eval()


def conditions(
    config, text_dim: int, reference: str | None = None, driving: str | None = None, caption: str = ""
) -> dict:
    """Latent conditions (batch of 1) from files, or from procedural test pair 0; numpy, as both samplers take."""
    from dreamactor_jax import animate
    from dreamactor_jax.data.components import components
    from dreamactor_jax.data.procedural import dataset as proc

    d = config.data
    comp = components(config)  # the run's codec (weights, tiling), text encoder and pixel sizes
    codec, h, w, frames, tf = comp.codec, comp.height, comp.width, comp.frames, comp.codec.temporal_factor
    if reference is None or driving is None:
        ex = proc.make_example("test", 0, comp.procedural("test"))
        ref_px = ex["cross_reference"]
        mot_px = ex["pose_video"] if d.stage == 1 else ex["video"]
        caption = caption or ex["cross_caption"]
    else:
        ref_px = animate.reference_image(reference, h, w)
        mot_px = animate.driving_frames(driving, h, w, frames)
        mot_px = mot_px[: (mot_px.shape[0] - 1) // tf * tf + 1]
    ref = np.asarray(codec.encode(ref_px[None, None].astype(np.float32)))
    mot = np.asarray(codec.encode(mot_px[None].astype(np.float32)))
    valid = np.ones(mot.shape[:2], np.float32)
    valid[:, : d.motion_masked_frames] = 0.0
    text, tmask = comp.text_for(text_dim).encode_batch([caption])
    return {"reference": ref, "motion": mot, "valid": valid, "text": text, "text_mask": tmask, "codec": codec}


def jax_sample(export_dir: str, cond: dict, noise: np.ndarray, sampler: dict) -> np.ndarray:
    """Our JAX sampler (``Animator.latents``) on the same weights, conditions and noise."""
    import jax

    from dreamactor_jax import animate
    from dreamactor_jax.diffusion.sampler import SamplerConfig

    w = animate.load_weights(export_dir, dtype="float32")
    anim = animate.Animator(w.mcfg, w.params, cond["codec"], SamplerConfig(**sampler), text_encoder=None)
    return np.asarray(
        anim.latents(
            cond["reference"],
            cond["motion"],
            cond["valid"],
            cond["text"],
            cond["text_mask"],
            jax.random.key(0),
            noise_bthwc=noise,
        )
    )


def serve(
    export_dir: str,
    config,
    *,
    reference: str | None = None,
    driving: str | None = None,
    caption: str = "",
    sampler: dict | None = None,
    seed: int = 0,
    out: str | None = None,
    compare: bool = False,
) -> dict:
    """Samples with diffusers from ``export_dir``; with ``compare`` also with JAX from the same noise."""
    t0 = time.perf_counter()
    sampler = {
        "method": "unipc",
        "steps": 20,
        "shift": 3.0,
        "guidance": 1.0,
        **(sampler or {}),
        "given_region": config.objective.given_region,
    }
    model = load_model(export_dir)
    cond = conditions(config, model.config.text_dim, reference, driving, caption)
    b, t, h, w, c = cond["motion"].shape
    noise = np.random.default_rng(seed).standard_normal((b, t, h, 2 * w, c)).astype(np.float32)
    lat = torch_sample(
        model, cond["reference"], cond["motion"], cond["valid"], cond["text"], cond["text_mask"], noise, **sampler
    )
    result = {
        "export": export_dir,
        "shape": list(lat.shape),
        "sampler": sampler,
        "latent_max_abs": float(np.abs(lat).max()),
    }
    if out:
        from dreamactor_jax import animate

        video = np.clip(np.asarray(cond["codec"].decode(lat)), -1.0, 1.0)[0]
        animate.write_video(out, animate.to_uint8(video), 8.0)
        result["out"] = out
    if compare:
        ours = jax_sample(export_dir, cond, noise, sampler)
        result["max_abs_diff"] = float(np.abs(ours - lat).max())
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def main(argv):
    from absl import app, flags

    del argv
    f = flags.FLAGS
    if f.config is None:
        raise app.UsageError("--config is required: the config the exported model was trained with")
    sampler = dict(method=f.method, steps=f.steps, shift=f.shift, guidance=f.guidance)
    from dreamactor_jax.animate import train_config

    config = train_config(f.config.to_dict(), f.stage)
    print(
        json.dumps(
            serve(
                f.export,
                config,
                reference=f.reference,
                driving=f.driving,
                caption=f.caption,
                sampler=sampler,
                seed=f.seed,
                out=f.out,
                compare=f.compare,
            )
        )
    )


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "The training config (train or curriculum file, ':arg').")
    flags.DEFINE_string("export", None, "Exported diffusers directory (launch/convert.py export).")
    flags.DEFINE_string("reference", None, "Reference image (default: a procedural test pair).")
    flags.DEFINE_string("driving", None, "Driving video / pose file (default: a procedural test pair).")
    flags.DEFINE_string("caption", "", "Caption of the target.")
    flags.DEFINE_enum("stage", "stage2", ["stage1", "stage2"], "Curriculum configs: whose data settings apply.")
    flags.DEFINE_enum("method", "unipc", list(SAMPLERS), "Sampler.")
    flags.DEFINE_integer("steps", 20, "Sampler steps.")
    flags.DEFINE_float("shift", 3.0, "Timestep shift.")
    flags.DEFINE_float("guidance", 1.0, "Text CFG scale (1: off).")
    flags.DEFINE_integer("seed", 0, "Initial-noise seed (numpy).")
    flags.DEFINE_string("out", None, "Write the torch sample as .gif / .mp4.")
    flags.DEFINE_bool("compare", False, "Also sample with JAX from the same noise and report max_abs_diff.")
    flags.mark_flags_as_required(["export"])
    app.run(main)
