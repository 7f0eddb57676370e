"""Pictures of the procedural data for people: a PNG contact sheet and an animated GIF."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dreamactor_jax.data.video_io import to_uint8, write_gif


def _upscale(img_hwc: np.ndarray, factor: int) -> np.ndarray:
    return img_hwc.repeat(factor, 0).repeat(factor, 1)


def contact_sheet_rows(examples: Sequence[dict], frames_shown: int = 4, zoom: int = 4, gap: int = 4
                       ) -> list[np.ndarray]:
    """One uint8 image row per example: reference | pose frames | target frames | cross-identity frames."""
    rows = []
    for ex in examples:
        t = ex["video"].shape[0]
        idx = np.unique(np.linspace(0, t - 1, min(frames_shown, t)).round().astype(int))
        groups = [[ex["reference"]], list(ex["pose_video"][idx]), list(ex["video"][idx]), list(ex["cross_video"][idx])]
        h, w = ex["reference"].shape[:2]
        tiles = []
        for g, group in enumerate(groups):
            for tile in group:
                tiles.append(_upscale(to_uint8(tile), zoom))
                tiles.append(np.full((h * zoom, 1 if tile is not group[-1] else 0, 3), 40, np.uint8))
            if g < len(groups) - 1:
                tiles.append(np.full((h * zoom, gap * 3, 3), 255, np.uint8))
        rows.append(np.concatenate([x for x in tiles if x.shape[1]], 1))
    return rows


def contact_sheet(examples: Sequence[dict], frames_shown: int = 4, zoom: int = 4):
    """A Pillow image: one row per example with its caption and its cross caption under it."""
    from PIL import Image, ImageDraw

    rows = contact_sheet_rows(examples, frames_shown, zoom)
    text_h = 26
    width = max(r.shape[1] for r in rows)
    height = sum(r.shape[0] + text_h + 6 for r in rows) + 18
    sheet = Image.new("RGB", (width + 8, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), "reference | motion (pose render) | target | cross-identity target (same motion)", fill=(0, 0, 0))
    y = 18
    for ex, row in zip(examples, rows):
        sheet.paste(Image.fromarray(row), (4, y))
        y += row.shape[0] + 1
        draw.text((4, y), f"[{ex['split']} #{ex['index']}] {ex['caption']}", fill=(0, 0, 0))
        draw.text((4, y + 12), f"cross: {ex['cross_caption']}", fill=(90, 90, 90))
        y += text_h + 5
    return sheet


def gif_frames(examples: Sequence[dict], zoom: int = 4) -> np.ndarray:
    """(T, H', W', 3) uint8: per time step, rows of (pose | target | cross target) for every example."""
    out = []
    t = examples[0]["video"].shape[0]
    for i in range(t):
        rows = []
        for ex in examples:
            tiles = [ex["pose_video"][i], ex["video"][i], ex["cross_video"][i]]
            sep = np.full((ex["video"].shape[1] * zoom, 2, 3), 255, np.uint8)
            row = [x for tile in tiles for x in (_upscale(to_uint8(tile), zoom), sep)][:-1]
            rows.append(np.concatenate(row, 1))
            rows.append(np.full((2, rows[-1].shape[1], 3), 255, np.uint8))
        out.append(np.concatenate(rows[:-1], 0))
    return np.stack(out)


def write_preview(out_png: str, examples: Sequence[dict], gif: str | None = None, frames_shown: int = 4,
                  zoom: int = 4, fps: float = 8.0) -> None:
    """Writes the contact sheet (and optionally the GIF)."""
    contact_sheet(examples, frames_shown, zoom).save(out_png)
    if gif:
        write_gif(gif, gif_frames(examples, zoom), fps)
