"""Sequence-parallel attention over the mesh's ``sequence`` axis (``jax.shard_map``).

Video tokens are split over ``sequence`` everywhere in a block; attention is
the one place that needs every token. Two strategies:

* **Ulysses** (DeepSpeed-Ulysses): an ``all_to_all`` turns "all heads, my
  tokens" into "my heads, all tokens", any local attention kernel runs
  (:func:`dreamactor_jax.models.attention.attend`), and a second ``all_to_all``
  turns it back. Needs the heads on a device divisible by the sequence axis
  size; communication is 4 all-to-alls of activations per attention.
* **Ring**: queries stay put, key/value blocks travel around the ring
  (``ppermute``) and an online softmax accumulates them. Works for any head
  count; runs the f32 reference math, not a fused kernel.

Cross-attention (keys/values are the short text or image tokens, replicated on
the sequence axis) needs neither: each device attends its own queries to all
keys locally. Kernels XLA cannot partition (``splash``, a Pallas call) run in the
same ``shard_map`` with no sequence axis too, one shard of batch and heads per
device. Heads may additionally be split over ``tensor`` and the batch
over ``data``/``fsdp``; axes that do not divide the array are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dreamactor_jax.models import attention as attn_lib

STRATEGIES = ("ulysses", "ring")


def _context_mesh(mesh):
    if mesh is not None:
        return mesh
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        raise ValueError("sequence-parallel attention needs a mesh: pass mesh= or call under jax.set_mesh(mesh)")
    return mesh


def _dividing_prefix(axes: Sequence[str], dim: int, sizes: dict[str, int]) -> tuple[str, ...]:
    """The longest prefix of the size>1 ``axes`` whose product divides ``dim`` (replicate the rest)."""
    axes = [a for a in axes if sizes.get(a, 1) > 1]
    while axes and dim % math.prod(sizes[a] for a in axes):
        axes.pop()
    return tuple(axes)


def _ring_local(q_bqhd, k_bkhd, v_bkhd, mask_bk, *, seq_axis: str, n: int):
    """Online-softmax attention of local queries to key/value blocks passed around the ring (f32 math)."""
    scale = 1.0 / math.sqrt(q_bqhd.shape[-1])
    b, nq, h, d = q_bqhd.shape
    perm = [(i, (i + 1) % n) for i in range(n)]
    m = jnp.full((b, h, nq), -jnp.inf, jnp.float32)
    denom = jnp.zeros((b, h, nq), jnp.float32)
    acc = jnp.zeros((b, h, nq, v_bkhd.shape[-1]), jnp.float32)
    k, v, mk = k_bkhd, v_bkhd, mask_bk
    for step in range(n):
        s_bhqk = jnp.einsum("bqhd,bkhd->bhqk", q_bqhd, k, preferred_element_type=jnp.float32) * scale
        if mk is not None:
            s_bhqk = s_bhqk + jnp.where(mk.astype(bool), 0.0, attn_lib.NEG_INF)[:, None, None, :]
        m_new = jnp.maximum(m, s_bhqk.max(axis=-1))
        corr = jnp.exp(m - m_new)
        p_bhqk = jnp.exp(s_bhqk - m_new[..., None])
        denom = denom * corr + p_bhqk.sum(axis=-1)
        acc = acc * corr[..., None] + jnp.einsum("bhqk,bkhd->bhqd", p_bhqk.astype(v.dtype), v,
                                                 preferred_element_type=jnp.float32)
        m = m_new
        if step + 1 < n:  # the last block needs no onward pass
            k, v = jax.lax.ppermute(k, seq_axis, perm), jax.lax.ppermute(v, seq_axis, perm)
            mk = None if mk is None else jax.lax.ppermute(mk, seq_axis, perm)
    out = acc / denom[..., None]
    return out.transpose(0, 2, 1, 3).astype(q_bqhd.dtype)


def sequence_parallel_attention(q_bqhd, k_bkhd, v_bkhd, mask_bk=None, *, mesh=None, impl: str = "xla",
                                strategy: str = "ulysses", kv_sharded: bool | None = None,
                                seq_axis: str = "sequence", batch_axes: Sequence[str] = ("data", "fsdp"),
                                head_axis: str | None = "tensor", block_q: int = 128, splash_block: int = 512):
    """Attention with queries split over ``seq_axis``; same result as ``attn_lib.attend(impl, ...)``.

    Args:
      q_bqhd: queries (B, Q, H, D).
      k_bkhd, v_bkhd: keys and values (B, K, H, D).
      mask_bk: optional key mask (B, K), true = attend.
      mesh: a Mesh or AbstractMesh; default the ``jax.set_mesh`` context mesh.
      impl: local attention implementation (see ``attn_lib.attend``); unused by ``ring``.
      strategy: 'ulysses' or 'ring' (only matters for ``kv_sharded``).
      kv_sharded: True for self-attention (keys split over tokens like the
        queries), False for cross-attention (keys replicated on ``seq_axis``).
        Default: ``K == Q``.
      seq_axis, batch_axes, head_axis: mesh axes for tokens, batch and heads.
      block_q: query block of ``impl='flash'`` and ``'blocked'``.
      splash_block: block of ``impl='splash'``.

    Returns:
      (B, Q, H, D) in q's dtype, split like the queries.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"sequence-parallel strategy must be one of {STRATEGIES}, got {strategy!r}")
    mesh = _context_mesh(mesh)
    sizes = {str(k): int(v) for k, v in dict(mesh.shape).items()}
    b, nq, h, _ = q_bqhd.shape
    nk = k_bkhd.shape[1]
    if kv_sharded is None:
        kv_sharded = nk == nq
    n = sizes.get(seq_axis, 1)
    if seq_axis in batch_axes or seq_axis == head_axis or (head_axis is not None and head_axis in batch_axes):
        raise ValueError(f"seq_axis={seq_axis!r}, batch_axes={tuple(batch_axes)} and head_axis={head_axis!r} "
                         "must be distinct mesh axes")
    if nq % n:
        raise ValueError(f"sequence parallelism: {nq} query tokens are not divisible by the '{seq_axis}' mesh axis "
                         f"size {n}")
    if kv_sharded and nk % n:
        raise ValueError(f"sequence parallelism: {nk} key tokens are not divisible by the '{seq_axis}' mesh axis "
                         f"size {n}")
    bat = _dividing_prefix(batch_axes, b, sizes)
    hx = _dividing_prefix((head_axis,), h, sizes) if head_axis is not None else ()
    h_local = h // math.prod(sizes[a] for a in hx)
    use_a2a = kv_sharded and n > 1 and strategy == "ulysses"
    if use_a2a and h_local % n:
        split = f" after splitting over '{head_axis}' ({h} heads / {sizes[head_axis]})" if hx else ""
        raise ValueError(f"Ulysses attention needs the heads on a device ({h_local}{split}) divisible by the "
                         f"'{seq_axis}' mesh axis size {n}; use a sequence axis size that divides them, or "
                         "strategy='ring'")

    bspec = (bat[0] if len(bat) == 1 else bat) if bat else None
    hspec = hx[0] if hx else None
    sspec = seq_axis if seq_axis in sizes else None
    kseq = sspec if kv_sharded else None
    q_spec = P(bspec, sspec, hspec, None)
    kv_spec = P(bspec, kseq, hspec, None)
    m_spec = P(bspec, kseq)

    def local(q, k, v, mk=None):
        if kv_sharded and n > 1 and strategy == "ring":
            return _ring_local(q, k, v, mk, seq_axis=seq_axis, n=n)
        if use_a2a:
            # (b, Q/n, h, d) -> (b, Q, h/n, d): gather my heads' tokens from every device, in device order.
            q, k, v = (jax.lax.all_to_all(x, seq_axis, split_axis=2, concat_axis=1, tiled=True) for x in (q, k, v))
            if mk is not None:
                mk = jax.lax.all_gather(mk, seq_axis, axis=1, tiled=True)
        o = attn_lib.attend(impl, q, k, v, mk, block_q=block_q, splash_block=splash_block)
        if use_a2a:
            o = jax.lax.all_to_all(o, seq_axis, split_axis=1, concat_axis=2, tiled=True)
        return o

    args, specs = (q_bqhd, k_bkhd, v_bkhd), (q_spec, kv_spec, kv_spec)
    if mask_bk is not None:
        args, specs = args + (mask_bk,), specs + (m_spec,)
    # check_vma=False: jax.nn.dot_product_attention and the cuDNN kernel are not annotated for
    # varying-manual-axes checking; every collective above is explicit, so the check adds nothing.
    fn = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=q_spec, check_vma=False)
    return fn(*args)


# Kernels that XLA cannot partition (custom calls): inside a sharded program they always run per shard.
_PER_SHARD_ONLY = ("splash",)


def attend(impl: str, q_bqhd, k_bkhd, v_bkhd, mask_bk=None, *, block_q: int = 128, splash_block: int = 512,
           kv_sharded: bool | None = None, strategy: str = "ulysses", seq_axis: str = "sequence"):
    """Drop-in for ``attn_lib.attend``: sequence-parallel when the context mesh has ``seq_axis`` > 1.

    Without a ``jax.set_mesh`` context, or with a sequence axis of size 1 (or
    already manual, inside another shard_map), this is ``attn_lib.attend``, except
    that a kernel XLA cannot partition (``splash``) still runs in ``shard_map``.
    """
    impl = attn_lib.resolve(impl, q_bqhd.dtype)
    kw = dict(block_q=block_q, splash_block=splash_block)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or any(t == jax.sharding.AxisType.Manual for t in mesh.axis_types):
        return attn_lib.attend(impl, q_bqhd, k_bkhd, v_bkhd, mask_bk, **kw)
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    if sizes.get(seq_axis, 1) == 1 and (impl not in _PER_SHARD_ONLY or math.prod(sizes.values()) == 1):
        return attn_lib.attend(impl, q_bqhd, k_bkhd, v_bkhd, mask_bk, **kw)
    return sequence_parallel_attention(q_bqhd, k_bkhd, v_bkhd, mask_bk, mesh=mesh, impl=impl, strategy=strategy,
                                       kv_sharded=kv_sharded, seq_axis=seq_axis, **kw)


def ulysses_attention(q_bqhd, k_bkhd, v_bkhd, mask_bk=None, *, mesh=None, impl: str = "xla",
                      seq_axis: str = "sequence", batch_axes: Sequence[str] = ("data", "fsdp"),
                      head_axis: str | None = "tensor", kv_sharded: bool | None = None, block_q: int = 128):
    """Ulysses sequence-parallel attention; see :func:`sequence_parallel_attention`."""
    return sequence_parallel_attention(q_bqhd, k_bkhd, v_bkhd, mask_bk, mesh=mesh, impl=impl, strategy="ulysses",
                                       kv_sharded=kv_sharded, seq_axis=seq_axis, batch_axes=batch_axes,
                                       head_axis=head_axis, block_q=block_q)


def ring_attention(q_bqhd, k_bkhd, v_bkhd, mask_bk=None, *, mesh=None, seq_axis: str = "sequence",
                   batch_axes: Sequence[str] = ("data", "fsdp"), head_axis: str | None = "tensor",
                   kv_sharded: bool | None = None):
    """Ring sequence-parallel attention; see :func:`sequence_parallel_attention`."""
    return sequence_parallel_attention(q_bqhd, k_bkhd, v_bkhd, mask_bk, mesh=mesh, strategy="ring",
                                       kv_sharded=kv_sharded, seq_axis=seq_axis, batch_axes=batch_axes,
                                       head_axis=head_axis)
