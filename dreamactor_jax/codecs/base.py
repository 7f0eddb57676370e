"""The codec interface every latent codec implements, lookup by name, and video files in and out.

``get_codec(name, **kwargs)`` builds a codec by name, so a config switches codecs with one field:
``'space_to_depth'`` (exact, instant, for tiny runs) or ``'wan_vae'`` (the Wan2.1 VAE; ``weights=`` a diffusers
``AutoencoderKLWan`` directory or ``Wan2.1_VAE.pth``). :func:`encode_video_file` / :func:`decode_to_video_file`
take any codec from an mp4 to latents and back, streaming through codecs that can (``encode_iter`` /
``decode_iter``), so a long video is never held in memory whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import numpy as np

from dreamactor_jax.data import video_io
from dreamactor_jax.data.video_io import to_pixels, to_uint8  # noqa: F401  (re-exported: codec users' names)


class Codec(Protocol):
    """Pixels (B, T, H, W, 3) in [-1, 1]  <->  latents (B, T', H', W', C)."""

    name: str
    latent_channels: int
    spatial_factor: int
    temporal_factor: int

    def encode(self, pixels_bthwc: Any) -> Any: ...

    def decode(self, latents_bthwc: Any) -> Any: ...

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]: ...


def check_pixels(pixels_bthwc: Any, spatial_factor: int, temporal_factor: int, who: str) -> None:
    """Clear errors for inputs a codec cannot take (rank, channels, frame count, spatial size)."""
    shape = np.shape(pixels_bthwc)
    if len(shape) != 5:
        raise ValueError(f"{who}: pixels must be (B, T, H, W, 3), got shape {shape}")
    _, t, h, w, c = shape
    if c != 3:
        raise ValueError(f"{who}: pixels must have 3 (RGB) channels, got {c}")
    if temporal_factor > 1 and (t - 1) % temporal_factor:
        raise ValueError(f"{who}: frame count {t} is not of the form {temporal_factor}k+1")
    for name, size in (("height", h), ("width", w)):
        if size % spatial_factor:
            raise ValueError(f"{who}: {name} {size} is not divisible by the spatial factor {spatial_factor}")


def check_latents(latents_bthwc: Any, channels: int, who: str) -> None:
    """Clear errors for latents a codec cannot decode (rank, channel count)."""
    shape = np.shape(latents_bthwc)
    if len(shape) != 5:
        raise ValueError(f"{who}: latents must be (B, T, H, W, C), got shape {shape}")
    if shape[-1] != channels:
        raise ValueError(f"{who}: latents have {shape[-1]} channels, expected {channels}")
    if 0 in shape:
        raise ValueError(f"{who}: latents have an empty dimension: shape {shape}")


# ---------------------------------------------------------------------------------------------------------
# Video files <-> latents.


def _frame_blocks(
    path: str, height: int | None, width: int | None, max_frames: int | None, block: int
) -> Iterator[np.ndarray]:
    """(1, t, H, W, 3) float32 blocks of at most ``block`` frames of a video file (the first ``max_frames``)."""
    buf, n = [], 0
    for frame in video_io.iter_frames(path, height, width):
        if max_frames is not None and n >= max_frames:
            break
        buf.append(frame)
        n += 1
        if len(buf) == block:
            yield to_pixels(np.stack(buf))[None]
            buf = []
    if buf:
        yield to_pixels(np.stack(buf))[None]
    if n == 0:
        raise video_io.VideoError(f"{path}: no frames decoded")


def encode_video_file(
    codec: Codec,
    path: str,
    *,
    height: int | None = None,
    width: int | None = None,
    max_frames: int | None = None,
    trim: bool = False,
) -> np.ndarray:
    """An mp4 (any FFmpeg-readable video) -> latents (T', H', W', C) float32 of its frames.

    Args:
      codec: any codec; one with ``encode_iter`` (the Wan VAE) streams the file chunk by chunk.
      height, width: resize (cover) and centre-crop every frame to this size (both or neither).
      max_frames: read at most this many frames.
      trim: drop trailing frames beyond the largest count the codec takes (4k+1 for the Wan VAE);
        otherwise such a count is an error.
    """
    if (height is None) != (width is None):
        raise ValueError("encode_video_file: give both height and width, or neither")
    try:
        if hasattr(codec, "encode_iter"):
            blocks = _frame_blocks(path, height, width, max_frames, 4 * codec.temporal_factor)
            return np.concatenate([np.asarray(x) for x in codec.encode_iter(blocks, trim=trim)], axis=1)[0]
        frames = video_io.read_video(path, height, width, max_frames=max_frames)
        tf = codec.temporal_factor
        if trim and tf > 1:
            frames = frames[: (len(frames) - 1) // tf * tf + 1]
        return np.asarray(codec.encode(to_pixels(frames)[None]))[0]
    except ValueError as e:
        hint = "" if trim or "frame count" not in str(e) else "; pass trim=True to drop the trailing frames"
        raise ValueError(f"{path}: {e}{hint}") from None


def _write_stream(path: str, blocks: Iterable[np.ndarray], fps: float, crf: int) -> int:
    """Writes (t, H, W, 3) uint8 blocks as one H.264 mp4 (video_io.write_video's settings), block by block."""
    import av

    n = 0
    with av.open(str(path), "w") as c:
        stream = None
        for block in blocks:
            for img in block:
                if stream is None:
                    h, w = img.shape[:2]
                    if h % 2 or w % 2:
                        raise ValueError(f"{path}: H.264 yuv420p needs even sizes, got {h}x{w}")
                    stream = c.add_stream("libx264", rate=int(round(fps)))
                    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                    stream.options = {"crf": str(crf)}
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                    c.mux(packet)
                n += 1
        if stream is not None:
            for packet in stream.encode():  # flush the encoder's delayed frames
                c.mux(packet)
    return n


def decode_to_video_file(
    codec: Codec, latents_thwc: Any, path: str, *, fps: float = 16.0, crf: int = 18
) -> dict[str, Any]:
    """Latents (T', H', W', C) (or (1, T', ...)) -> an H.264 mp4 at ``path`` (Wan2.1's 16 fps by default).

    Codecs with ``decode_iter`` stream: frames go to the file chunk by chunk.
    """
    lat = np.asarray(latents_thwc)
    if lat.ndim == 4:
        lat = lat[None]
    if lat.ndim != 5 or lat.shape[0] != 1:
        raise ValueError(f"decode_to_video_file: latents must be (T, H, W, C) or (1, T, H, W, C), got {lat.shape}")
    check_latents(lat, codec.latent_channels, f"{codec.name}.decode")
    if hasattr(codec, "decode_iter"):
        blocks = (to_uint8(x[0]) for x in codec.decode_iter(lat))
    else:
        blocks = iter([to_uint8(np.asarray(codec.decode(lat))[0])])
    frames = _write_stream(path, blocks, fps, crf)
    return {"path": os.path.abspath(path), "frames": frames, "fps": fps}


def save_latents(path: str, latents: Any) -> None:
    """Latents to ``.npy`` or ``.safetensors`` (one tensor named ``latents``), float32."""
    from dreamactor_jax.convert.safetensors_io import Spec, write_file

    a = np.ascontiguousarray(np.asarray(latents, np.float32))
    if str(path).endswith(".safetensors"):
        write_file(str(path), [Spec("latents", a.shape, a.dtype)], iter([("latents", a)]))
    elif str(path).endswith(".npy"):
        np.save(path, a)
    else:
        raise ValueError(f"{path}: latents are written as .npy or .safetensors")


def load_latents(path: str) -> np.ndarray:
    """Latents from ``.npy`` (never unpickled) or ``.safetensors`` (its one tensor, or the one named ``latents``)."""
    from dreamactor_jax.convert.safetensors_io import SafetensorsFile

    if str(path).endswith(".safetensors"):
        f = SafetensorsFile(str(path))
        keys = f.keys()
        if "latents" not in keys and len(keys) != 1:
            raise ValueError(f"{path}: expected one tensor or one named 'latents', found {keys}")
        return np.asarray(f.get("latents" if "latents" in keys else keys[0]), np.float32)
    if str(path).endswith(".npy"):
        return np.load(path, allow_pickle=False)
    raise ValueError(f"{path}: latents are read from .npy or .safetensors")
