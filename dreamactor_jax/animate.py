"""Animate a reference with a driving signal: the one home of inference, pixels in and pixels out.

Used by the synthesis and evaluation phases, the training loop's sample previews, ``launch/sample.py`` and the
notebooks. :class:`Animator` encodes pixels with the run's codec, samples the target half of the canvas with
:func:`dreamactor_jax.diffusion.sampler.sample` and decodes it; :func:`animate_files` does the same from files
on disk (weights from a training checkpoint or an exported diffusers directory, a reference image, a driving
video or pose sequence) and writes MP4/GIF. Sampling is jitted once per batch shape; with ``mesh`` the output
is replicated so every process of a multi-host run can read it.
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
from flax import nnx

from dreamactor_jax.diffusion import sampler as sampler_lib
from dreamactor_jax.models.build import abstract_model, split_params
from dreamactor_jax.models.config import WanConfig

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif")
OUTPUT_EXTS = (".mp4", ".gif")


class Animator:
    """Samples videos from a model: ``animator(reference, motion, captions, rng) -> video``.

    Args:
      mcfg: the model architecture.
      params: its parameters (a nested dict as ``split_params`` gives), or None to pass them per call.
      codec: pixels <-> latents (``dreamactor_jax.codecs``).
      scfg: sampler settings.
      text_encoder: captions -> (embeddings, mask); only :meth:`__call__` needs it.
      masked_frames: leading driving frames hidden, as in training.
      mesh: when given, the sampled latents are replicated over it (readable on every process).
    """

    def __init__(
        self,
        mcfg: WanConfig,
        params: dict | None,
        codec,
        scfg: sampler_lib.SamplerConfig,
        text_encoder,
        masked_frames: int = 0,
        mesh: jax.sharding.Mesh | None = None,
    ):
        self.mcfg, self.codec, self.text, self.masked, self.scfg = mcfg, codec, text_encoder, masked_frames, scfg
        graphdef, _ = split_params(abstract_model(mcfg))
        self.params = params

        def run(p, ref, mot, valid, text, tmask, rng, noise):
            model = nnx.merge(graphdef, p)
            return sampler_lib.sample(model, ref, mot, text, tmask, rng, scfg, valid, noise)

        out = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self._run = jax.jit(run, out_shardings=out)

    def valid_mask(self, batch: int, frames: int) -> np.ndarray:
        """(B, T) motion validity: the first ``masked_frames`` latent frames hidden."""
        valid = np.ones((batch, frames), np.float32)
        valid[:, : self.masked] = 0.0
        return valid

    def latents(
        self,
        reference_b1hwc,
        motion_bthwc,
        motion_valid_bt,
        text_ble,
        text_mask_bl,
        rng: jax.Array,
        *,
        params: dict | None = None,
        noise_bthwc=None,
    ) -> jax.Array:
        """Latent-space sampling: generated target latents (B,T,H,W,C), float32.

        ``params`` (default: the constructor's) and ``noise_bthwc`` (the initial canvas noise; default drawn
        from ``rng``) make this the entry point of previews and of parity checks against other samplers.
        """
        p = self.params if params is None else params
        if p is None:
            raise ValueError("Animator: no params (pass them to the constructor or to latents())")
        noise = None if noise_bthwc is None else jnp.asarray(noise_bthwc, jnp.float32)
        return self._run(
            p,
            jnp.asarray(reference_b1hwc),
            jnp.asarray(motion_bthwc),
            jnp.asarray(motion_valid_bt),
            jnp.asarray(text_ble),
            jnp.asarray(text_mask_bl),
            rng,
            noise,
        )

    def __call__(
        self, reference_bhw3: np.ndarray, motion_bthw3: np.ndarray, captions: list[str], rng: jax.Array, *,
        params: dict | None = None,
    ) -> np.ndarray:
        """reference (B,H,W,3), motion (B,T,H,W,3) in [-1,1] -> generated video (B,T,H,W,3) in [-1,1].

        The first ``masked_frames`` motion frames are hidden, as in training: frame 0 is the
        reference, and the model bridges from it to the driving motion. ``params`` (default: the
        constructor's) lets one Animator, compiled once, sample several models of one architecture.
        """
        ref = self.codec.encode(reference_bhw3[:, None].astype(np.float32))
        mot = self.codec.encode(motion_bthw3.astype(np.float32))
        text, tmask = self.text.encode_batch(captions)
        lat = self.latents(ref, mot, self.valid_mask(mot.shape[0], mot.shape[1]), text, tmask, rng, params=params)
        return np.clip(np.asarray(self.codec.decode(np.asarray(lat))), -1.0, 1.0)


# --- pictures ------------------------------------------------------------------------------------------------


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8."""
    return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid_frames(rows: Sequence[Sequence[np.ndarray]], zoom: int = 1, pad: int = 1) -> np.ndarray:
    """A video grid: ``rows`` of cells, each a video (T,H,W,3) or a still (H,W,3) in [-1,1] -> (T,H',W',3) uint8.

    Stills repeat over time; all cells share one (H, W) and the videos one T. Cells are separated by
    ``pad`` white pixels and upscaled ``zoom`` times (nearest neighbour).
    """
    t = max((c.shape[0] for row in rows for c in row if c.ndim == 4), default=1)
    out = []
    for row in rows:
        cells = [np.broadcast_to(c[None], (t, *c.shape)) if c.ndim == 3 else c for c in row]
        cells = [np.pad(c, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=1.0) for c in cells]
        out.append(np.concatenate(cells, axis=2))
    frames = to_uint8(np.concatenate(out, axis=1))
    return frames.repeat(zoom, 1).repeat(zoom, 2) if zoom > 1 else frames


def filmstrip(frames_thw3: np.ndarray) -> np.ndarray:
    """(T,H,W,3) -> one (H, T·W, 3) image of the frames side by side (a still for TensorBoard's Images tab)."""
    return np.concatenate(list(frames_thw3), axis=1)


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
        transformer directory (``launch/convert.py export`` writes one; read by ``dreamactor_jax.convert.io``).
      weights: checkpoints only: ``params``, ``ema``, or ``auto`` (EMA when the run kept one).
      step: checkpoints only: the step (default: the newest).
      dtype: compute dtype (``float32`` | ``bfloat16``); default: the checkpoint's, float32 for a transformer dir.

    Returns:
      The loaded weights; ``run_config`` is the run's resolved config for checkpoints (None for exports).
    """
    if is_transformer_dir(path):
        from dreamactor_jax.convert import io, names

        source = io.open_weights(path)
        cfg = io.resolve_config(source).replace(dtype=dtype or "float32", param_dtype="float32")
        params = names.unflatten({k: jnp.asarray(v) for k, v in io.load_params(source, cfg).items()})
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
    from PIL import Image

    from dreamactor_jax.data import video_io

    with Image.open(path) as im:
        img = im.convert("RGB")
    f = video_io.fit(img.height, img.width, height, width)
    img = img.resize((f.resized_width, f.resized_height), Image.BICUBIC)
    arr = np.asarray(img)[f.top : f.top + height, f.left : f.left + width]
    return arr.astype(np.float32) / 127.5 - 1.0


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
    from dreamactor_jax.data import video_io

    ext = os.path.splitext(path)[1].lower()
    if ext in VIDEO_EXTS:
        frames = video_io.read_video(path, height, width, max_frames)
        return frames.astype(np.float32) / 127.5 - 1.0
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
    from dreamactor_jax.data import video_io

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
    if "stage1" in c:
        from dreamactor_jax.curriculum.driver import stage_config

        c = stage_config(c, stage)
    return c


def demo_pair(config: ml_collections.ConfigDict, index: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """A held-out procedural test pair at the run's size: (reference (H,W,3), driving (T,H,W,3), caption).

    The reference is a character never seen in training; the driving signal is another test character's motion,
    as pose render (stage 1 configs) or RGB video (stage 2), as the evaluation phase pairs them.
    """
    from dreamactor_jax.data import sources
    from dreamactor_jax.data.procedural import make_example

    ex = make_example("test", index, sources.procedural_config(config, "test"))
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

    Returns:
      A summary: outputs, frames, height, width, weights source, seconds.
    """
    from dreamactor_jax.data import sources
    from dreamactor_jax.data.procedural import ProceduralConfig
    from dreamactor_jax.data.text import TextEncoder

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
    codec = sources.codec_from(config)
    height, width = d.height * codec.spatial_factor, d.width * codec.spatial_factor
    tf = codec.temporal_factor
    want = frames if frames is not None else (d.frames - 1) * tf + 1
    if (reference is None) != (driving is None):
        raise ValueError("give both a reference and a driving file, or neither (a procedural test pair)")
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
    text = TextEncoder(length=d.text_len, dim=w.mcfg.text_dim, seed=config.seed)
    anim = Animator(w.mcfg, w.params, codec, scfg, text, masked_frames=d.motion_masked_frames)
    video = anim(ref[None], motion[None], [caption], jax.random.key(seed))[0]
    cells = [video] if layout == "video" else [ref, motion, video]
    out_frames = grid_frames([cells], zoom=zoom, pad=0 if layout == "video" else 1)
    fps = fps or ProceduralConfig().fps
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
