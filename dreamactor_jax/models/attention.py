"""3D rotary embedding and the attention kernels the model can use.

``xla`` (plain einsum-softmax-einsum in f32) is the reference every other
implementation is tested against. ``flash`` is FlashAttention-2 written in JAX:
query blocks under ``lax.map``, a hand-written backward (``jax.custom_vjp``) that
recomputes each block's scores once from the saved log-sum-exp, and the
(B, H, N, D) layout so every block matmul is a plain batched GEMM; it never holds
an N x N score matrix and is the fastest on CPU (benchmarks/attention.py).
``blocked`` splits the queries into blocks computed under ``jax.checkpoint``
(autodiff backward). ``dot_product`` is ``jax.nn.dot_product_attention`` (XLA),
``cudnn`` the same with the cuDNN flash kernel (GPU only), ``splash`` the Pallas
TPU splash-attention kernel (TPU only; ``interpret=True`` runs it on CPU for
tests). ``auto`` picks splash on TPU, cuDNN on GPU for 16-bit inputs, else flash.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -1e30
FLASH_MIN_KEYS = 2048  # flash: a query block holds at least block_q x this many scores (see attention_flash)


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


def _flash_blocks(x_bhnd, block: int):
    """(B, H, N, D) -> (N/block, B, H, block, D): the leading axis is what ``lax.map``/``scan`` iterate over."""
    b, h, n, d = x_bhnd.shape
    return x_bhnd.reshape(b, h, n // block, block, d).transpose(2, 0, 1, 3, 4)


def _flash_unblocks(x_nbhqd):
    nb, b, h, bq, d = x_nbhqd.shape
    return x_nbhqd.transpose(1, 2, 0, 3, 4).reshape(b, h, nb * bq, d)


def _flash_scores(q_bhqd, k_bhkd, bias_b11k):
    s = jnp.einsum("bhqd,bhkd->bhqk", q_bhqd, k_bhkd, preferred_element_type=jnp.float32)
    return s if bias_b11k is None else s + bias_b11k


def _flash_forward(q, k, v, bias, block_q):
    """Output (B, H, Q, D) and row log-sum-exp (Q/bq, B, H, bq) f32, for queries already scaled by 1/sqrt(D)."""

    def one(q_blk):
        s = _flash_scores(q_blk, k, bias)
        m = jnp.max(s, axis=-1, keepdims=True)
        p = jnp.exp(s - m)
        denom = jnp.sum(p, axis=-1, keepdims=True)
        o = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32) / denom
        return o.astype(q.dtype), (m + jnp.log(denom))[..., 0]

    o, lse = jax.lax.map(one, _flash_blocks(q, block_q))
    return _flash_unblocks(o), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, bias, block_q):
    return _flash_forward(q, k, v, bias, block_q)[0]


def _flash_fwd(q, k, v, bias, block_q):
    o, lse = _flash_forward(q, k, v, bias, block_q)
    return o, (q, k, v, bias, o, lse)


def _flash_bwd(block_q, res, do):
    """FlashAttention-2's backward over query blocks, with each block's scores laid out key-major (B, H, K, bq).

    Same math as the query-major layout; on XLA:CPU it is 1.3-1.5x faster, because then dV and dK
    are plain (K, bq) @ (bq, D) products and dQ takes the library's transposed-operand kernel
    (benchmarks/attention.py).
    """
    q, k, v, bias, o, lse = res
    # rowsum(dO * O) as a contraction: XLA:CPU runs a multiply+reduce fusion many times slower (models/ops.py)
    delta = jnp.einsum("bhqd,bhqd->bhq", do, o, preferred_element_type=jnp.float32)  # (B, H, Q)
    bias_t = None if bias is None else jnp.swapaxes(bias, -1, -2)  # (B, 1, K, 1)

    def body(carry, xs):
        dk, dv = carry
        q_blk, do_blk, lse_blk, delta_blk = xs  # (B, H, bq, D) x2, (B, H, bq) x2
        s_t = jnp.einsum("bhkd,bhqd->bhkq", k, q_blk, preferred_element_type=jnp.float32)
        if bias_t is not None:
            s_t = s_t + bias_t
        p_t = jnp.exp(s_t - lse_blk[:, :, None, :])  # (B, H, K, bq) f32
        dv = dv + jnp.einsum("bhkq,bhqd->bhkd", p_t.astype(do.dtype), do_blk, preferred_element_type=jnp.float32)
        dp_t = jnp.einsum("bhkd,bhqd->bhkq", v, do_blk, preferred_element_type=jnp.float32)
        ds_t = p_t * (dp_t - delta_blk[:, :, None, :])
        dk = dk + jnp.einsum("bhkq,bhqd->bhkd", ds_t.astype(q.dtype), q_blk, preferred_element_type=jnp.float32)
        dq = jnp.einsum("bhkq,bhkd->bhqd", ds_t.astype(k.dtype), k, preferred_element_type=jnp.float32)
        return (dk, dv), dq.astype(q.dtype)

    b, h, nq, _ = q.shape
    delta_blocks = delta.reshape(b, h, nq // block_q, block_q).transpose(2, 0, 1, 3)
    zeros = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    xs = (_flash_blocks(q, block_q), _flash_blocks(do, block_q), lse, delta_blocks)
    (dk, dv), dq = jax.lax.scan(body, zeros, xs)
    dbias = None if bias is None else jnp.zeros_like(bias)
    return _flash_unblocks(dq), dk.astype(k.dtype), dv.astype(v.dtype), dbias


_flash.defvjp(_flash_fwd, _flash_bwd)


def attention_flash(q_bqhd, k_bkhd, v_bkhd, mask_bk=None, *, block_q: int = 128, min_keys: int = FLASH_MIN_KEYS):
    """FlashAttention-2 in JAX: same math as :func:`attention_xla`, O(block_q · K) score memory, custom backward.

    Short key sequences (text cross-attention) get proportionally taller query blocks, so that no block
    holds fewer than ``block_q x min_keys`` scores: a loop of tiny products costs more than it saves.
    """
    b, nq, h, d = q_bqhd.shape
    nk = k_bkhd.shape[1]
    bq = min(max(block_q, block_q * min_keys // max(nk, 1)), nq)
    pad = (-nq) % bq
    # Scaling the queries once (instead of every score block, forward and backward) saves two passes over the
    # scores; autodiff carries the factor to dq.
    q = (q_bqhd.astype(jnp.float32) * (1.0 / math.sqrt(d))).astype(q_bqhd.dtype).transpose(0, 2, 1, 3)
    if pad:  # padded query rows are computed and dropped; their zero cotangent adds nothing to dK, dV
        q = jnp.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0)))
    k, v = k_bkhd.transpose(0, 2, 1, 3), v_bkhd.transpose(0, 2, 1, 3)
    bias = _key_bias(mask_bk)
    o = _flash(q, k, v, bias, bq)
    return o[:, :, :nq].transpose(0, 2, 1, 3)


@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, nq: int, nk: int, block_q: int, block_kv: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    mask = sm.MultiHeadMask([sm.FullMask((nq, nk)) for _ in range(heads)])
    # Separate dq and dkv backward kernels: the fused one keeps a dq partial per key block, (K/block) x the size
    # of q, which at video lengths (151k tokens at 720p) is tens of GiB.
    sizes = sk.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv, block_q_dkv=block_q,
                          block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv, block_q_dq=block_q,
                          block_kv_dq=block_kv)
    return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def attention_splash(q_bqhd, k_bkhd, v_bkhd, mask_bk=None, *, block: int = 512, interpret: bool = False):
    """Pallas TPU splash attention (fused forward and backward kernels); same math as :func:`attention_xla`.

    Token counts are padded to the block sizes (multiples of 128, shrunk for short
    sequences); padded keys and masked keys (``mask_bk`` false) get segment id 0
    against the queries' 1, so no query attends them. Inside a sharded program this
    must run per shard: :func:`dreamactor_jax.models.sequence_parallel.attend` puts it in
    ``shard_map``. A query whose keys are all masked gets zeros (the reference: the
    mean of the values).
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    b, nq, h, d = q_bqhd.shape
    nk = k_bkhd.shape[1]
    if block % 128:
        raise ValueError(f"splash attention block size must be a multiple of 128, got {block}")
    bq = min(block, _round_up(nq, 128))
    bkv = min(block, _round_up(nk, 128))
    nq_p, nk_p = _round_up(nq, bq), _round_up(nk, bkv)
    # The kernel takes (H, N, D) per example and applies no 1/sqrt(D).
    q = (q_bqhd.astype(jnp.float32) / math.sqrt(d)).astype(q_bqhd.dtype).transpose(0, 2, 1, 3)
    k, v = k_bkhd.transpose(0, 2, 1, 3), v_bkhd.transpose(0, 2, 1, 3)
    q = jnp.pad(q, ((0, 0), (0, 0), (0, nq_p - nq), (0, 0)))
    k = jnp.pad(k, ((0, 0), (0, 0), (0, nk_p - nk), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, 0), (0, nk_p - nk), (0, 0)))
    kernel = _splash_kernel(h, nq_p, nk_p, bq, bkv, interpret)
    if mask_bk is None and nk_p == nk:
        o = jax.vmap(kernel)(q, k, v)
    else:
        valid = jnp.ones((b, nk), jnp.int32) if mask_bk is None else mask_bk.astype(jnp.int32)
        kv_ids = jnp.pad(valid, ((0, 0), (0, nk_p - nk)))
        ids = sk.SegmentIds(q=jnp.ones((b, nq_p), jnp.int32), kv=kv_ids)
        o = jax.vmap(kernel)(q, k, v, segment_ids=ids)
    return o[:, :, :nq].transpose(0, 2, 1, 3).astype(q_bqhd.dtype)


def resolve(impl: str, dtype=None, platform: str | None = None) -> str:
    """The implementation ``impl`` stands for on ``platform`` (default: the default backend)."""
    if impl != "auto":
        return impl
    platform = platform or jax.default_backend()
    if platform == "tpu":
        return "splash"
    if platform == "gpu" and dtype is not None and jnp.dtype(dtype).itemsize == 2:
        return "cudnn"  # cuDNN's flash kernel takes 16-bit inputs only
    return "flash"


def attend(impl: str, q_bqhd, k_bkhd, v_bkhd, mask_bk=None, *, block_q: int = 128, splash_block: int = 512):
    """Dispatches to the attention implementation named ``impl``."""
    impl = resolve(impl, q_bqhd.dtype)
    if impl == "xla":
        return attention_xla(q_bqhd, k_bkhd, v_bkhd, mask_bk)
    if impl == "flash":
        return attention_flash(q_bqhd, k_bkhd, v_bkhd, mask_bk, block_q=block_q)
    if impl == "blocked":
        return attention_blocked(q_bqhd, k_bkhd, v_bkhd, mask_bk, block_q=block_q)
    if impl == "dot_product":
        return attention_dot_product(q_bqhd, k_bkhd, v_bkhd, mask_bk, implementation="xla")
    if impl == "cudnn":
        if jax.default_backend() != "gpu":
            raise ValueError("attention='cudnn' needs a GPU backend; use 'flash', 'xla', 'blocked' or 'dot_product'")
        return attention_dot_product(q_bqhd, k_bkhd, v_bkhd, mask_bk, implementation="cudnn")
    if impl == "splash":
        return attention_splash(q_bqhd, k_bkhd, v_bkhd, mask_bk, block=splash_block)
    raise ValueError(f"attention implementation {impl!r} is not available here")
