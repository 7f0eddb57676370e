"""Forward parity of one diffusers-layout directory loaded into our model and into diffusers (fp32, CPU).

Both models read the same files: ours through :mod:`dreamactor_jax.convert.pretrained`,
diffusers through ``WanTransformer3DModel.from_pretrained``, whose missing and
unexpected keys are checked explicitly (it only warns about them). Needs torch,
diffusers and accelerate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dreamactor_jax.convert import names, pretrained
from dreamactor_jax.models import build

# diffusers' I2V attention takes everything before the last 512 context tokens as image tokens.
_I2V_TEXT_LEN = 512


def load_ours(src: str, overrides: Mapping[str, Any] | None = None):
    """(config with fp32 compute and params, our flat params) for ``src``."""
    source = pretrained.open_weights(src)
    cfg = pretrained.resolve_config(source, overrides).replace(dtype="float32", param_dtype="float32")
    return cfg, pretrained.load_params(source, cfg)


def forward(cfg, flat: Mapping[names.Path, Any], inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Our model's output for ``inputs`` (see :func:`random_inputs`), jitted: eager dispatch is far slower."""
    graphdef, _ = build.split_params(build.abstract_model(cfg))

    @jax.jit
    def run(params, x, t, text, image):
        return build.merge(graphdef, params)(x, t, text, None, image)

    image = inputs.get("image")
    return np.asarray(run(names.unflatten({k: jnp.asarray(v) for k, v in flat.items()}), inputs["x"], inputs["t"],
                          inputs["text"], None if image is None else jnp.asarray(image)))


def load_diffusers(src: str):
    """diffusers' model from ``src``; raises if any key is missing, unexpected or mis-shaped."""
    import diffusers
    import torch

    model, info = diffusers.WanTransformer3DModel.from_pretrained(src, torch_dtype=torch.float32,
                                                                  output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise ValueError(f"diffusers did not load {src} cleanly: {bad}")
    return model.eval()


def random_inputs(cfg, seed: int = 0, frames: int = 2, height: int = 4, width: int = 6,
                  text_len: int = 7, image_len: int = 5) -> dict[str, np.ndarray]:
    """Seeded inputs (channel-last latents ``x``, timestep ``t``, ``text``, optional ``image``)."""
    rng = np.random.default_rng(seed)
    pt, ph, pw = cfg.patch_size
    shape = (1, frames * pt, height * ph, width * pw, cfg.in_channels)
    text_len = _I2V_TEXT_LEN if cfg.image_dim is not None else text_len
    out = {"x": rng.standard_normal(shape).astype(np.float32),
           "t": np.array([rng.uniform(0, 1000)], np.float32),
           "text": rng.standard_normal((1, text_len, cfg.text_dim)).astype(np.float32)}
    if cfg.image_dim is not None:
        out["image"] = rng.standard_normal((1, image_len, cfg.image_dim)).astype(np.float32)
    return out


def run_parity(src: str, *, tol: float = 1e-4, seed: int = 0,
               overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Runs both models on the same seeded inputs.

    Returns:
      max_abs, max_rel (max_abs / max |reference|), ref_max_abs, tol, ok (max_abs <= tol), shape.
    """
    import torch

    source = pretrained.open_weights(src)
    if source.layout != "diffusers":
        raise ValueError(f"{src} is in the {source.layout} layout; parity compares against diffusers' "
                         "from_pretrained, which needs the diffusers layout (import, then export it first)")
    cfg, flat = load_ours(src, overrides)
    ref_model = load_diffusers(src)
    inp = random_inputs(cfg, seed)
    ours = forward(cfg, flat, inp)
    with torch.no_grad():
        image = None if "image" not in inp else torch.from_numpy(inp["image"])
        ref = ref_model(torch.from_numpy(inp["x"]).permute(0, 4, 1, 2, 3), torch.from_numpy(inp["t"]),
                        torch.from_numpy(inp["text"]), encoder_hidden_states_image=image, return_dict=False)[0]
    ref = ref.permute(0, 2, 3, 4, 1).numpy()
    max_abs = float(np.abs(ours - ref).max())
    scale = float(np.abs(ref).max())
    return {"max_abs": max_abs, "max_rel": max_abs / max(scale, 1e-30), "ref_max_abs": scale, "tol": tol,
            "ok": bool(max_abs <= tol), "shape": list(ref.shape)}
