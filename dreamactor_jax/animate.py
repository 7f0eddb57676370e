"""Animate from files on disk: the application layer of inference (``launch/sample.py``, notebooks, serving).

:func:`animate_files` loads weights (a training checkpoint or an exported diffusers directory), a reference image
and a driving video or pose sequence, samples with :class:`Animator` and writes MP4/GIF. The Animator itself (the
sampler front end, pixels in and pixels out) lives in :mod:`dreamactor_jax.diffusion.animator`, below training
and the curriculum, which use it too; it is re-exported here with the picture helpers, as
``dreamactor_jax.animate.Animator``, ``to_uint8``, ``grid_frames`` and ``filmstrip``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dreamactor_jax import config_lib
from dreamactor_jax.data import video_io
from dreamactor_jax.data.components import components
from dreamactor_jax.data.video_io import filmstrip, grid_frames, to_uint8  # noqa: F401  (re-exported)
from dreamactor_jax.diffusion import sampler as sampler_lib
from dreamactor_jax.diffusion.animator import Animator  # noqa: F401  (re-exported: the public name)
from dreamactor_jax.models.config import WanConfig

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif")
OUTPUT_EXTS = (".mp4", ".gif")


# --- from files ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Weights:
    """A model loaded for inference: its architecture, parameters, the run config if known, and what was read."""

    mcfg: WanConfig
    params: dict
    run_config: dict | None
    source: str  # "checkpoint" | "diffusers" | "original"
    path: str


def is_transformer_dir(path: str) -> bool:
    """A diffusers (or original Wan2.1) transformer directory or file: safetensors weights, not Orbax steps."""
    if os.path.isfile(path):
        return path.endswith(".safetensors")
    return os.path.isdir(path) and any(n.endswith(".safetensors") for n in os.listdir(path))


def load_weights(path: str, *, weights: str = "auto", step: int | None = None, dtype: str | None = None) -> Weights:
    """Weights for sampling from a training workdir, a checkpoint directory, or an exported transformer directory.

    Args:
      path: a run's workdir (holding ``checkpoints/``), a checkpoint directory, or a diffusers / original Wan2.1
        transformer directory (``launch/convert.py export`` writes one; read by ``dreamactor_jax.convert.pretrained``).
      weights: checkpoints only: ``params``, ``ema``, or ``auto`` (EMA when the run kept one).
      step: checkpoints only: the step (default: the newest).
      dtype: compute dtype (``float32`` | ``bfloat16``); default: the checkpoint's, float32 for a transformer dir.

    Returns:
      The loaded weights; ``run_config`` is the run's resolved config for checkpoints (None for exports).
    """
    if is_transformer_dir(path):
        from dreamactor_jax.convert import names, pretrained

        source = pretrained.open_weights(path)
        cfg = pretrained.resolve_config(source).replace(dtype=dtype or "float32", param_dtype="float32")
        params = names.unflatten({k: jnp.asarray(v) for k, v in pretrained.load_params(source, cfg).items()})
        return Weights(cfg, params, None, source.layout, os.path.abspath(path))
    from dreamactor_jax.train import checkpoint

    directory = checkpoint.resolve_dir(path)
    steps = checkpoint.finalized_steps(directory)
    if not steps:
        raise FileNotFoundError(
            f"{path}: neither a transformer directory (safetensors) nor a checkpoint directory with a finalised step"
        )
    step = steps[0] if step is None else step
    meta = checkpoint.read_meta(directory, step)
    cfg = checkpoint.model_config_from_meta(meta)
    cfg = cfg.replace(dtype=dtype) if dtype else cfg
    items = ("ema", "params") if weights == "auto" else (weights,)
    for item in items:
        try:
            params = checkpoint.restore_item(directory, item, step=step)
            break
        except FileNotFoundError:
            if item == items[-1]:
                raise
    return Weights(cfg, params, checkpoint.read_json_item(directory, "config", step), "checkpoint", directory)


def reference_image(path: str, height: int, width: int) -> np.ndarray:
    """An image file (PNG, JPG, ...) -> (H, W, 3) float32 in [-1, 1], cover-resized and centre-cropped."""
    return video_io.read_image(path, height, width)


def driving_frames(
    path: str, height: int, width: int, max_frames: int | None = None, pose_frame_size: tuple[int, int] | None = None
) -> np.ndarray:
    """A driving signal file -> (T, H, W, 3) float32 in [-1, 1].

    * a video (``.mp4``, ``.mov``, ``.gif``, ...): an RGB driving video or an already rendered pose video;
    * ``.npz`` with ``keypoints`` (T, S, J, 2), ``parents``, ``joint_roles``, ``keypoint_mask`` (S, J): skeleton
      tables as the procedural dataset stores them (``make_example``), in output pixels, drawn by
      ``data/procedural/render.render_pose``;
    * ``.npy`` of OpenPose-18 keypoints (T, 18, 3) or (T, S, 18, 3) (x, y, confidence) in pixels of a frame of
      ``pose_frame_size`` (H, W; default: the output size), cover-fitted to the output and drawn as ingestion does.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext in VIDEO_EXTS:
        return video_io.to_pixels(video_io.read_video(path, height, width, max_frames))
    if ext == ".npz":
        from dreamactor_jax.data.procedural import render

        with np.load(path) as z:
            missing = [k for k in ("keypoints", "parents", "joint_roles", "keypoint_mask") if k not in z]
            if missing:
                raise ValueError(
                    f"{path}: a pose .npz needs keypoints, parents, joint_roles, keypoint_mask; missing {missing}"
                )
            kp = z["keypoints"][:max_frames]
            return render.render_pose(kp, z["parents"], z["joint_roles"], z["keypoint_mask"], height, width)
    if ext == ".npy":
        from dreamactor_jax.data import ingest

        kp = np.load(path).astype(np.float32)[:max_frames]
        if kp.ndim == 3:
            kp = kp[:, None]
        if kp.ndim != 4 or kp.shape[2:] != (18, 3):
            raise ValueError(f"{path}: OpenPose keypoints must be (T, 18, 3) or (T, S, 18, 3), got {kp.shape}")
        src_h, src_w = pose_frame_size or (height, width)
        kp[..., :2] = video_io.fit(src_h, src_w, height, width).points(kp[..., :2])
        return ingest.render_openpose(kp, height, width)
    raise ValueError(
        f"{path}: unknown driving file type {ext!r}; use a video {VIDEO_EXTS}, a pose .npz or an OpenPose .npy"
    )


def write_video(path: str, frames_thw3: np.ndarray, fps: float) -> None:
    """uint8 frames to ``.mp4`` (H.264) or ``.gif`` by the extension of ``path``."""
    ext = os.path.splitext(path)[1].lower()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if ext == ".gif":
        video_io.write_gif(path, frames_thw3, fps)
    elif ext == ".mp4":
        video_io.write_video(path, frames_thw3, fps)
    else:
        raise ValueError(f"{path}: output must end in one of {OUTPUT_EXTS}")


def train_config(run_config: Mapping[str, Any], stage: str) -> ml_collections.ConfigDict:
    """A train config from a train or curriculum config (dict or ConfigDict)."""
    c = ml_collections.ConfigDict(dict(run_config))
    return config_lib.stage_config(c, stage) if "stage1" in c else c


def demo_pair(config: ml_collections.ConfigDict, index: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """A held-out procedural test pair at the run's size: (reference (H,W,3), driving (T,H,W,3), caption).

    The reference is a character never seen in training; the driving signal is another test character's motion,
    as pose render (stage 1 configs) or RGB video (stage 2), as the evaluation phase pairs them.
    """
    from dreamactor_jax.data.procedural import make_example

    ex = make_example("test", index, components(config).procedural("test"))
    return ex["cross_reference"], ex["pose_video"] if config.data.stage == 1 else ex["video"], ex["cross_caption"]


def animate_files(
    weights_path: str,
    reference: str | None,
    driving: str | None,
    outputs: Sequence[str],
    *,
    run_config: Mapping[str, Any] | None = None,
    stage: str = "stage2",
    caption: str = "",
    frames: int | None = None,
    sampler: Mapping[str, Any] | None = None,
    seed: int = 0,
    weights: str = "auto",
    step: int | None = None,
    layout: str = "video",
    zoom: int = 1,
    fps: float | None = None,
    pose_frame_size: tuple[int, int] | None = None,
    dtype: str | None = None,
    demo_index: int = 0,
    umt5_dir: str | None = None,
    clip_dir: str | None = None,
) -> dict:
    """Animates the character in ``reference`` with the motion in ``driving``; writes each of ``outputs``.

    Args:
      weights_path: see :func:`load_weights`.
      reference: an image file of the character (None, with ``driving`` None: :func:`demo_pair` ``demo_index``).
      driving: see :func:`driving_frames`. A stage-1 model is driven by poses, a stage-2 model by RGB video.
      outputs: ``.mp4`` and/or ``.gif`` paths.
      run_config: the run's config (codec, text encoder, sizes, masked frames, given-region mode); default: the
        one stored in the checkpoint. Exports carry none, so pass the config they were trained with.
      stage: for a curriculum config, whose stage's data settings apply (``stage1`` | ``stage2``).
      caption: text prompt for the target (encoded by the run's tiny text encoder; the demo pair brings its own).
      frames: pixel frames to generate (default: the training clip length), at most the driving's length.
      sampler: ``SamplerConfig`` fields (method, steps, shift, guidance); given_region follows the run config.
      seed: initial-noise seed.
      weights, step: checkpoint item and step (see :func:`load_weights`).
      layout: ``video`` (the animation alone) or ``side_by_side`` (reference | driving | animation).
      zoom: nearest-neighbour upscaling of the written frames.
      fps: output frame rate (default: the procedural data's).
      pose_frame_size: (H, W) of the pixel frame OpenPose ``.npy`` keypoints refer to.
      dtype: compute dtype override (see :func:`load_weights`).
      demo_index: which procedural test pair stands in for missing ``reference``/``driving``.
      umt5_dir: a local umT5 encoder + tokenizer directory (``data/umt5.py``) that encodes ``caption``; required
        for a model trained on records' umT5 text (``data.text_source='records'``), which the run's tiny text
        encoder cannot stand in for.
      clip_dir: a local CLIP vision checkpoint (``data/clip_image.py``) for an I2V model's image tokens of
        ``reference`` (default: the run config's ``data.clip_dir``).

    Returns:
      A summary: outputs, frames, height, width, weights source, seconds.
    """
    t0 = time.perf_counter()
    if layout not in ("video", "side_by_side"):
        raise ValueError(f"layout={layout!r}; use 'video' or 'side_by_side'")
    for out in outputs:
        if os.path.splitext(out)[1].lower() not in OUTPUT_EXTS:
            raise ValueError(f"{out}: output must end in one of {OUTPUT_EXTS}")
    w = load_weights(weights_path, weights=weights, step=step, dtype=dtype)
    rc = run_config if run_config is not None else w.run_config
    if rc is None:
        raise ValueError(
            f"{weights_path} holds no run config (codec, text encoder, sizes): pass the config the "
            "model was trained with (launch/sample.py --config=configs/curriculum.py:tiny)"
        )
    config = train_config(rc, stage)
    d = config.data
    comp = components(config)
    codec, height, width, tf = comp.codec, comp.height, comp.width, comp.codec.temporal_factor
    want = frames if frames is not None else comp.frames
    if (reference is None) != (driving is None):
        raise ValueError("give both a reference and a driving file, or neither (a procedural test pair)")
    real_text = d.get("text_source", "toy") == "records"
    if umt5_dir:
        from dreamactor_jax.data.umt5 import UMT5TextEncoder

        text = UMT5TextEncoder(umt5_dir, length=d.text_len)
    elif real_text:
        raise ValueError("the run config's data.text_source is 'records' (umT5 text): pass umt5_dir "
                         "(launch/sample.py --umt5_dir) to encode the caption; the toy text encoder cannot stand in")
    else:
        text = comp.text
    if reference is None and real_text:
        raise ValueError("a real-data run has no procedural demo pair: give a reference image and a driving file")
    if reference is None:
        ref, motion, demo_caption = demo_pair(config, demo_index)
        caption = caption or demo_caption
        motion = motion[:want]
    else:
        ref = reference_image(reference, height, width)
        motion = driving_frames(driving, height, width, want, pose_frame_size)
    n = (motion.shape[0] - 1) // tf * tf + 1  # the codec takes tf*k + 1 frames
    if n < 2:
        raise ValueError(f"{driving}: {motion.shape[0]} driving frame(s); need at least {tf + 1}")
    motion = motion[:n]
    scfg = sampler_lib.SamplerConfig(**{**dict(sampler or {}), "given_region": config.objective.given_region})
    if w.mcfg.text_dim != comp.model.text_dim:
        raise ValueError(f"{weights_path}: text_dim {w.mcfg.text_dim}, but the run config's model has "
                         f"{comp.model.text_dim}: pass the config the model was trained with")
    if text.dim != w.mcfg.text_dim:
        raise ValueError(f"text encoder width {text.dim} (umt5_dir={umt5_dir}) != the model's text_dim "
                         f"{w.mcfg.text_dim}")
    image = None
    if w.mcfg.image_dim:
        clip_dir = clip_dir or d.get("clip_dir", "")
        if not clip_dir:
            raise ValueError(f"{weights_path} is an I2V model (image_dim={w.mcfg.image_dim}): pass clip_dir "
                             "(launch/sample.py --clip_dir) for the reference's CLIP image tokens")
        from dreamactor_jax.data.clip_image import CLIPImageEncoder

        image = CLIPImageEncoder(clip_dir).encode_batch(ref[None])
    anim = Animator(w.mcfg, w.params, codec, scfg, text, masked_frames=d.motion_masked_frames)
    video = anim(ref[None], motion[None], [caption], jax.random.key(seed), image_bme=image)[0]
    cells = [video] if layout == "video" else [ref, motion, video]
    out_frames = grid_frames([cells], zoom=zoom, pad=0 if layout == "video" else 1)
    fps = fps or comp.fps
    for out in outputs:
        write_video(out, out_frames, fps)
    return {
        "outputs": [os.path.abspath(o) for o in outputs],
        "frames": int(video.shape[0]),
        "height": height,
        "reference": reference or f"procedural test pair {demo_index}",
        "caption": caption,
        "width": width,
        "weights": w.source,
        "weights_path": w.path,
        "sampler": dataclasses.asdict(scfg),
        "seconds": round(time.perf_counter() - t0, 2),
    }
