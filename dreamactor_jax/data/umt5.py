"""Caption embeddings with a umT5 encoder (Wan2.1's text encoder) for precomputing real-run records.

Wan2.1 embeds prompts with umT5-XXL (4096-dim, 512 tokens): tokenise with padding to 512 and
truncation, encode with the attention mask, then keep each caption's real tokens and zero the rest,
so padding positions hold exact zeros. This class does the same with any local umT5 checkpoint
(``transformers`` ``UMT5EncoderModel`` + its tokenizer, loaded with ``local_files_only``: nothing
downloads) and has the interface of :class:`dreamactor_jax.data.text.TextEncoder`:
``encoder(caption) -> (emb (L, E) float32, mask (L,) float32)``.

Requires the ``text`` extra (``transformers``, ``torch``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class UMT5TextEncoder:
    def __init__(self, model_dir: str, length: int = 512, batch_size: int = 16):
        try:
            import torch
            from transformers import AutoTokenizer, UMT5EncoderModel
        except ImportError as e:  # pragma: no cover - exercised only without the extra
            raise ImportError("UMT5TextEncoder needs transformers and torch: pip install -e '.[text]'") from e
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = UMT5EncoderModel.from_pretrained(model_dir, local_files_only=True).eval()
        self.length, self.batch_size = int(length), int(batch_size)
        self.dim = int(self.model.config.d_model)

    def encode_batch(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(B, L, E) embeddings with zeros past each caption's tokens, and (B, L) masks."""
        embs, masks = [], []
        for i in range(0, len(captions), self.batch_size):
            tok = self.tokenizer(list(captions[i : i + self.batch_size]), padding="max_length",
                                 max_length=self.length, truncation=True, add_special_tokens=True,
                                 return_tensors="pt")
            with self._torch.no_grad():
                h = self.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state
            mask = tok.attention_mask.numpy().astype(np.float32)
            embs.append(h.float().numpy() * mask[..., None])
            masks.append(mask)
        return np.concatenate(embs).astype(np.float32), np.concatenate(masks)

    def __call__(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
        emb, mask = self.encode_batch([caption])
        return emb[0], mask[0]
