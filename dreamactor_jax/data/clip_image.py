"""Image tokens for the Wan2.1-I2V image branch from a local CLIP vision checkpoint.

Wan2.1-I2V conditions its cross-attention on CLIP ViT-H/14 tokens of the reference image besides the text:
the vision tower's penultimate hidden states, (257, 1280) at 224 x 224 (diffusers' ``WanImageToVideoPipeline``
takes ``hidden_states[-2]`` of ``CLIPVisionModel``). This class computes the same with any local
``transformers`` ``CLIPVisionModel`` checkpoint (``local_files_only``: nothing downloads): the image is resized
so its short side is the model's ``image_size`` (bicubic), centre-cropped, normalised with CLIP's mean and std.

``encoder.encode_batch(images (B, H, W, 3) in [-1, 1]) -> (B, M, E) float32``; ``tokens`` = M, ``dim`` = E.
``launch/precompute.py --clip_dir`` stores them per record as ``image_tokens``; the model consumes them when
its config has ``image_dim`` (an I2V model). Requires the ``text`` extra (``transformers``, ``torch``).
"""

from __future__ import annotations

import numpy as np

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def preprocess(images_bhw3: np.ndarray, size: int) -> np.ndarray:
    """[-1, 1] images -> (B, 3, size, size) CLIP inputs: short side to ``size`` (bicubic), centre crop, normalise."""
    from PIL import Image

    out = []
    for img in np.asarray(images_bhw3, np.float32):
        u8 = np.clip((img + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
        h, w = u8.shape[:2]
        s = size / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        im = np.asarray(Image.fromarray(u8).resize((nw, nh), Image.Resampling.BICUBIC), np.float32) / 255.0
        top, left = (nh - size) // 2, (nw - size) // 2
        im = im[top : top + size, left : left + size]
        out.append(((im - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


class CLIPImageEncoder:
    def __init__(self, model_dir: str, batch_size: int = 16):
        try:
            import torch
            from transformers import CLIPVisionModel
        except ImportError as e:  # pragma: no cover - exercised only without the extra
            raise ImportError("CLIPImageEncoder needs transformers and torch: pip install -e '.[text]'") from e
        self._torch = torch
        try:
            self.model = CLIPVisionModel.from_pretrained(model_dir, local_files_only=True).eval()
        except (OSError, ValueError) as e:
            raise ValueError(f"{model_dir}: not a local CLIP vision checkpoint ({e})") from e
        vc = self.model.config
        self.size = int(vc.image_size)
        self.tokens = (self.size // int(vc.patch_size)) ** 2 + 1  # patches + the class token
        self.dim = int(vc.hidden_size)
        self.batch_size = int(batch_size)

    def encode_batch(self, images_bhw3: np.ndarray) -> np.ndarray:
        """(B, M, E) penultimate-layer hidden states of the CLIP vision tower."""
        outs = []
        for i in range(0, len(images_bhw3), self.batch_size):
            x = self._torch.from_numpy(preprocess(images_bhw3[i : i + self.batch_size], self.size))
            with self._torch.no_grad():
                h = self.model(pixel_values=x, output_hidden_states=True).hidden_states[-2]
            outs.append(h.float().numpy())
        return np.concatenate(outs).astype(np.float32)
