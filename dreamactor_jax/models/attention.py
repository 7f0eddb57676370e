"""3D rotary embedding and the attention kernels the model can use.

``xla`` (plain einsum-softmax-einsum in f32) is the reference every other
implementation is tested against. ``blocked`` splits the queries into blocks
computed under ``jax.checkpoint`` so a block's score matrix stays small: on CPU
this is several times faster for the backward pass (see PLATFORM.md, section
11). ``dot_product`` is ``jax.nn.dot_product_attention`` (XLA), ``cudnn`` the
same with the cuDNN flash kernel (GPU only).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -1e30


def rope_tables(grid_thw: tuple[int, int, int], dims_thw: tuple[int, int, int], theta: float = 10000.0,
                max_seq_len: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Cos/sin tables for Wan's 3D RoPE over a (T', H', W') token grid, row-major.

    Each axis owns ``dims_thw[i]`` channels of the head dim; within an axis,
    frequency ``j`` rotates the interleaved channel pair (2j, 2j+1), as in Wan
    and diffusers. Computed in float64 with numpy (static for a given shape).

    Returns:
      cos, sin: (N, head_dim // 2) float32, N = T'·H'·W'.
    """
    t, h, w = grid_thw
    if max(grid_thw) > max_seq_len:
        raise ValueError(f"token grid {grid_thw} exceeds rope_max_seq_len={max_seq_len}")
    angles = []
    for n, dim, axis in zip((t, h, w), dims_thw, range(3)):
        freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64)[: dim // 2] / dim))
        a = np.outer(np.arange(n, dtype=np.float64), freqs)  # (n, dim/2)
        shape = [1, 1, 1, dim // 2]
        shape[axis] = n
        angles.append(np.broadcast_to(a.reshape(shape), (t, h, w, dim // 2)))
    ang = np.concatenate(angles, axis=-1).reshape(t * h * w, -1)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def apply_rope(x_bnhd: jax.Array, cos_nk: jax.Array, sin_nk: jax.Array) -> jax.Array:
    """Rotates interleaved channel pairs of ``x`` (B, N, H, D) by the tables (N, D/2)."""
    b, n, h, d = x_bnhd.shape
    x = x_bnhd.astype(jnp.float32).reshape(b, n, h, d // 2, 2)
    x0, x1 = x[..., 0], x[..., 1]
    c = cos_nk[None, :, None, :]
    s = sin_nk[None, :, None, :]
    out = jnp.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)
    return out.reshape(b, n, h, d).astype(x_bnhd.dtype)


def _key_bias(mask_bk: jax.Array | None) -> jax.Array | None:
    if mask_bk is None:
        return None
    return jnp.where(mask_bk.astype(bool), 0.0, NEG_INF).astype(jnp.float32)[:, None, None, :]


def attention_xla(q_bqhd, k_bkhd, v_bkhd, mask_bk=None):
    """Reference attention: scores and softmax in f32, output in q's dtype."""
    scale = 1.0 / math.sqrt(q_bqhd.shape[-1])
    s_bhqk = jnp.einsum("bqhd,bkhd->bhqk", q_bqhd, k_bkhd, preferred_element_type=jnp.float32) * scale
    bias = _key_bias(mask_bk)
    if bias is not None:
        s_bhqk = s_bhqk + bias
    p_bhqk = jax.nn.softmax(s_bhqk, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", p_bhqk.astype(v_bkhd.dtype), v_bkhd,
                      preferred_element_type=jnp.float32).astype(q_bqhd.dtype)


def attention_blocked(q_bqhd, k_bkhd, v_bkhd, mask_bk=None, *, block_q: int = 128):
    """Query-blocked attention: same math as :func:`attention_xla`, bounded score memory."""
    b, nq, h, d = q_bqhd.shape
    if nq <= block_q:
        return attention_xla(q_bqhd, k_bkhd, v_bkhd, mask_bk)
    pad = (-nq) % block_q
    q = jnp.pad(q_bqhd, ((0, 0), (0, pad), (0, 0), (0, 0))) if pad else q_bqhd
    nb = q.shape[1] // block_q
    q_nbqhd = q.reshape(b, nb, block_q, h, d).swapaxes(0, 1)

    @jax.checkpoint
    def one(qb):
        return attention_xla(qb, k_bkhd, v_bkhd, mask_bk)

    out = jax.lax.map(one, q_nbqhd).swapaxes(0, 1).reshape(b, nb * block_q, h, d)
    return out[:, :nq] if pad else out


def attention_dot_product(q_bqhd, k_bkhd, v_bkhd, mask_bk=None, *, implementation=None):
    mask = None if mask_bk is None else mask_bk.astype(bool)[:, None, None, :]
    return jax.nn.dot_product_attention(q_bqhd, k_bkhd, v_bkhd, mask=mask, implementation=implementation)


def attend(impl: str, q_bqhd, k_bkhd, v_bkhd, mask_bk=None, *, block_q: int = 128):
    """Dispatches to the attention implementation named ``impl``."""
    if impl == "xla":
        return attention_xla(q_bqhd, k_bkhd, v_bkhd, mask_bk)
    if impl == "blocked":
        return attention_blocked(q_bqhd, k_bkhd, v_bkhd, mask_bk, block_q=block_q)
    if impl == "dot_product":
        return attention_dot_product(q_bqhd, k_bkhd, v_bkhd, mask_bk, implementation="xla")
    if impl == "cudnn":
        if jax.default_backend() != "gpu":
            raise ValueError("attention='cudnn' needs a GPU backend; use 'xla', 'blocked' or 'dot_product'")
        return attention_dot_product(q_bqhd, k_bkhd, v_bkhd, mask_bk, implementation="cudnn")
    raise ValueError(f"attention implementation {impl!r} is not available here")
