"""A tiny deterministic text encoder for captions: no downloads, no learned weights.

Stands in for umT5-XXL in tiny runs. A caption is lower-cased and split into words; each word maps to
a fixed pseudo-random vector seeded by a stable hash of (word, seed), and a sinusoidal position code
is added so word order matters. Captions are truncated or zero-padded to ``length`` tokens and
returned with a mask (1 on words, 0 on padding). Equal captions always give equal arrays, on every
machine and Python run (no reliance on Python's randomised ``hash``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")


def tokenize(caption: str) -> list[str]:
    """Lower-case alphanumeric words; punctuation separates words and is dropped."""
    return _WORD.findall(caption.lower())


@functools.lru_cache(maxsize=65536)
def _word_vector(word: str, dim: int, seed: int) -> np.ndarray:
    digest = hashlib.blake2b(f"{seed}:{word}".encode(), digest_size=8).digest()
    vec = np.random.default_rng(int.from_bytes(digest, "little")).standard_normal(dim).astype(np.float32)
    vec.setflags(write=False)
    return vec


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
    """(length, dim) float32 transformer-style position code (sin on even, cos on odd channels)."""
    pos = np.arange(length, dtype=np.float64)[:, None]
    freq = np.exp(-np.log(10_000.0) * (np.arange(0, dim, 2) / max(dim, 1)))
    out = np.zeros((length, dim), np.float64)
    out[:, 0::2] = np.sin(pos * freq)
    out[:, 1::2] = np.cos(pos * freq[: dim // 2])
    return out.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class TextEncoder:
    """Caption -> (embeddings (L, E) float32, mask (L,) float32).

    Attributes:
      length: L, tokens kept (longer captions are truncated).
      dim: E, embedding width (must match the model's ``text_dim``).
      seed: selects the word table; different seeds give unrelated tables.
      position_scale: weight of the position code relative to the unit-variance word vectors.
    """

    length: int = 8
    dim: int = 32
    seed: int = 0
    position_scale: float = 0.5

    def __post_init__(self):
        if self.length < 1 or self.dim < 2:
            raise ValueError(f"TextEncoder needs length >= 1 and dim >= 2, got length={self.length}, dim={self.dim}")

    def __call__(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
        words = tokenize(caption)[: self.length]
        emb_le = np.zeros((self.length, self.dim), np.float32)
        mask_l = np.zeros((self.length,), np.float32)
        if words:
            n = len(words)
            emb_le[:n] = np.stack([_word_vector(w, self.dim, self.seed) for w in words])
            emb_le[:n] += self.position_scale * sinusoidal_positions(n, self.dim)
            mask_l[:n] = 1.0
        return emb_le, mask_l

    def encode_batch(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(B, L, E) embeddings and (B, L) masks for a list of captions."""
        pairs = [self(c) for c in captions]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
