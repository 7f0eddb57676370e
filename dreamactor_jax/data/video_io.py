"""Video files <-> uint8 RGB frames with PyAV (``av``; its wheel bundles FFmpeg and libx264), GIFs (Pillow), and
the one home of the pixel conventions: model pixels are float32 in [-1, 1] (:func:`to_pixels`, :func:`to_uint8`),
video grids (:func:`grid_frames`) and filmstrips for people.

Frames are (T, H, W, 3) uint8. Resizing keeps the aspect ratio: scale so the frame covers the target
(``fit``), then crop the centre; :class:`Fit` carries that map so keypoints can follow the pixels.
Decoding errors (corrupt or truncated files) raise :class:`VideoError` naming the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np


class VideoError(RuntimeError):
    """A video that cannot be opened or decoded."""


def _av():
    import av  # imported on use: only ingestion and tests need FFmpeg

    return av


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """Stream facts read from the container (``num_frames`` may be 0 when the container does not say)."""

    width: int
    height: int
    fps: float
    num_frames: int


@dataclasses.dataclass(frozen=True)
class Fit:
    """Source (h, w) -> target (height, width): scale by ``scale_y``/``scale_x``, then drop ``top``/``left``.

    A source pixel coordinate (x, y) (OpenPose convention: pixel centres at integers) lands at
    ``((x + 0.5) * scale_x - left, (y + 0.5) * scale_y - top)`` in the target's pixel-corner convention
    (pixel centres at +0.5), which is what ``render_pose`` draws in.
    """

    resized_height: int
    resized_width: int
    top: int
    left: int
    scale_y: float
    scale_x: float

    def points(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) source pixel (x, y) -> target pixel (x, y), float32."""
        xy = np.asarray(xy, np.float32)
        x = (xy[..., 0] + 0.5) * self.scale_x - self.left
        y = (xy[..., 1] + 0.5) * self.scale_y - self.top
        return np.stack([x, y], -1).astype(np.float32)


def fit(src_height: int, src_width: int, height: int, width: int) -> Fit:
    """Cover-and-centre-crop map from a (src_height, src_width) frame to (height, width)."""
    s = max(height / src_height, width / src_width)
    rh, rw = max(height, round(src_height * s)), max(width, round(src_width * s))
    top, left = (rh - height) // 2, (rw - width) // 2
    return Fit(rh, rw, top, left, rh / src_height, rw / src_width)


def _with_stream(path: str, read):
    """``read(container, first video stream)``, with open/decode failures and a missing stream as VideoError."""
    av = _av()
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoError(f"{path}: no video stream")
            return read(c, c.streams.video[0])
    except av.FFmpegError as e:
        raise VideoError(f"{path}: {e}") from e


def probe(path: str) -> VideoInfo:
    """Size, frame rate and (when known) frame count of the first video stream."""
    return _with_stream(path, lambda c, s: VideoInfo(s.codec_context.width, s.codec_context.height,
                                                     float(s.average_rate) if s.average_rate else 0.0,
                                                     int(s.frames or 0)))


def count_frames(path: str) -> int:
    """Frames of the first video stream: the container's count when it has one, else its packets (no decoding).

    Raises:
      VideoError: the file cannot be opened or has no video stream.
    """
    return _with_stream(path, lambda c, s: int(s.frames) if s.frames else sum(1 for p in c.demux(s) if p.size))


def iter_frames(path: str, height: int | None = None, width: int | None = None) -> Iterator[np.ndarray]:
    """Yields (H, W, 3) uint8 frames, resized by :func:`fit` and centre-cropped when a size is given.

    Raises:
      VideoError: the file cannot be opened or a packet cannot be decoded (frames before it were yielded).
    """
    av = _av()
    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            f = None
            if height is not None and width is not None:
                f = fit(stream.codec_context.height, stream.codec_context.width, height, width)
            for frame in c.decode(stream):
                if f is None:
                    yield frame.to_ndarray(format="rgb24")
                    continue
                # swscale's area filter: the right kernel for downscaling, and no Python-side resize.
                img = frame.reformat(width=f.resized_width, height=f.resized_height, format="rgb24",
                                     interpolation="AREA").to_ndarray()
                yield np.ascontiguousarray(img[f.top : f.top + height, f.left : f.left + width])
    except (av.FFmpegError, IndexError) as e:  # IndexError: no video stream
        raise VideoError(f"{path}: {e}") from e


def read_video(path: str, height: int | None = None, width: int | None = None, max_frames: int | None = None
               ) -> np.ndarray:
    """All frames (or the first ``max_frames``) as (T, H, W, 3) uint8."""
    out = []
    for frame in iter_frames(path, height, width):
        out.append(frame)
        if max_frames is not None and len(out) >= max_frames:
            break
    if not out:
        raise VideoError(f"{path}: no frames decoded")
    return np.stack(out)


def read_image(path: str, height: int, width: int) -> np.ndarray:
    """An image file (PNG, JPG, ...) -> (H, W, 3) float32 in [-1, 1], cover-resized (bicubic) and centre-cropped."""
    from PIL import Image

    from dreamactor_jax import fs

    with fs.open(path, "rb") as raw, Image.open(raw) as im:  # a local path or a URL (gs://)
        img = im.convert("RGB")
    f = fit(img.height, img.width, height, width)
    img = img.resize((f.resized_width, f.resized_height), Image.BICUBIC)
    arr = np.asarray(img)[f.top : f.top + height, f.left : f.left + width]
    return to_pixels(arr)


def write_video(path: str, frames_thw3: np.ndarray, fps: float = 8.0, crf: int = 18) -> None:
    """Writes (T, H, W, 3) uint8 frames as H.264 (yuv420p: even H and W) into an mp4/mkv container."""
    av = _av()
    frames = np.asarray(frames_thw3)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video: frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"write_video: H.264 yuv420p needs even sizes, got {h}x{w}")
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf)}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            c.mux(packet)


def write_gif(path: str, frames_thw3: np.ndarray, fps: float = 8.0) -> None:
    """Writes (T, H, W, 3) uint8 frames as a looping animated GIF."""
    from PIL import Image

    frames = np.asarray(frames_thw3)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_gif: frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


# --- pixels and pictures ---------------------------------------------------------------------------------------


def to_pixels(frames: Any) -> np.ndarray:
    """uint8 frames -> float32 in [-1, 1]."""
    return np.asarray(frames, np.float32) / np.float32(127.5) - np.float32(1.0)


def to_uint8(pixels: Any) -> np.ndarray:
    """Pixels in [-1, 1] -> uint8 (rounded half to even, clipped)."""
    return np.clip(np.rint((np.asarray(pixels, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


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
