"""The Wan2.1 video DiT in Flax NNX, weight-for-weight diffusers' ``WanTransformer3DModel``.

Module and parameter names mirror diffusers (``condition_embedder.time_embedder.linear_1``,
``blocks.attn1.to_q``, ``blocks.ffn.net_0.proj``, ...) so that conversion is a
name table. Differences in layout, all handled by :mod:`dreamactor_jax.convert`:

* tensors are channels-last: the model takes ``x`` as (B, T, H, W, C);
* Linear kernels are (in, out), the patch embedding kernel is (pt, ph, pw, C, D);
* the blocks are stored stacked on a leading ``layers`` axis (one layout whether
  the forward pass scans or unrolls them).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from dreamactor_jax.models import attention as attn_lib
from dreamactor_jax.models import lora as lora_lib
from dreamactor_jax.models import ops
from dreamactor_jax.models import sequence_parallel as seq_lib
from dreamactor_jax.models.config import WanConfig
from dreamactor_jax.models.layers import FeedForward, LayerNorm, Linear, RMSNorm, param, xavier_uniform, zeros
from dreamactor_jax.parallel.rules import constrain

normal_002 = nnx.initializers.normal(0.02)


def timestep_sinusoid(t: jax.Array, dim: int) -> jax.Array:
    """diffusers ``Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)`` in f32: [cos | sin]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class PatchEmbedding(nnx.Module):
    """The stride = kernel Conv3d of Wan as a matmul over patches; kernel is (pt, ph, pw, C, D)."""

    def __init__(self, patch, cin, dim, *, param_dtype, rngs):
        self.kernel = param(rngs, xavier_uniform, (*patch, cin, dim), param_dtype, (None, None, None, None, "embed"))
        self.bias = param(rngs, zeros, (dim,), param_dtype, ("embed",))


class TimestepEmbedding(nnx.Module):
    def __init__(self, din, dim, *, param_dtype, rngs):
        f32 = jnp.float32  # the timestep path stays f32
        self.linear_1 = Linear(din, dim, axes=(None, "embed"), dtype=f32, param_dtype=param_dtype, rngs=rngs,
                               kernel_init=normal_002)
        self.linear_2 = Linear(dim, dim, axes=("embed", "embed_out"), dtype=f32, param_dtype=param_dtype,
                               rngs=rngs, kernel_init=normal_002)

    def __call__(self, x):
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


class TextProjection(nnx.Module):
    """diffusers ``PixArtAlphaTextProjection`` with tanh-GELU."""

    def __init__(self, din, dim, *, dtype, param_dtype, rngs):
        self.linear_1 = Linear(din, dim, axes=(None, "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                               kernel_init=normal_002)
        self.linear_2 = Linear(dim, dim, axes=("embed", "embed_out"), dtype=dtype, param_dtype=param_dtype,
                               rngs=rngs, kernel_init=normal_002)

    def __call__(self, x):
        return self.linear_2(jax.nn.gelu(self.linear_1(x), approximate=True))


class ImageEmbedding(nnx.Module):
    """diffusers ``WanImageEmbedding`` (Wan2.1-I2V CLIP tokens -> model width)."""

    def __init__(self, din, dim, *, dtype, param_dtype, rngs):
        self.norm1 = LayerNorm(din, eps=1e-5, affine=True, axes=(None,), param_dtype=param_dtype)
        self.ff = FeedForward(din, din, dim, approximate=False, in_axes=(None, "mlp"), out_axes=("mlp", "embed"),
                              dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm2 = LayerNorm(dim, eps=1e-5, affine=True, param_dtype=param_dtype)

    def __call__(self, x):
        return self.norm2(self.ff(self.norm1(x)))


class ConditionEmbedder(nnx.Module):
    """diffusers ``WanTimeTextImageEmbedding``."""

    def __init__(self, cfg: WanConfig, *, dtype, param_dtype, rngs):
        d = cfg.inner_dim
        self.freq_dim = cfg.freq_dim
        self.time_embedder = TimestepEmbedding(cfg.freq_dim, d, param_dtype=param_dtype, rngs=rngs)
        self.time_proj = Linear(d, 6 * d, axes=("embed", "mlp"), dtype=jnp.float32, param_dtype=param_dtype,
                                rngs=rngs, kernel_init=zeros)
        self.text_embedder = TextProjection(cfg.text_dim, d, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.image_embedder = (
            ImageEmbedding(cfg.image_dim, d, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            if cfg.image_dim is not None else None)

    def __call__(self, t, text, image=None):
        temb = self.time_embedder(timestep_sinusoid(t, self.freq_dim))  # (..., D) f32
        tproj = self.time_proj(jax.nn.silu(temb))  # (..., 6D) f32
        ctx = self.text_embedder(text)
        img = self.image_embedder(image) if (image is not None and self.image_embedder is not None) else None
        return temb, tproj, ctx, img


class Attention(nnx.Module):
    """diffusers ``WanAttention`` (self- or cross-attention, optional I2V image branch)."""

    def __init__(self, cfg: WanConfig, *, added_kv: bool, dtype, param_dtype, rngs):
        d, inner = cfg.inner_dim, cfg.inner_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.heads = cfg.num_attention_heads
        self.impl = cfg.attention
        self.block_q = cfg.attention_block_q
        self.splash_block = cfg.attention_splash_block
        self.strategy = cfg.sequence_parallel
        self.to_q = Linear(d, inner, axes=("embed", "heads"), **kw)
        self.to_k = Linear(d, inner, axes=("embed", "heads"), **kw)
        self.to_v = Linear(d, inner, axes=("embed", "heads"), **kw)
        self.to_out = Linear(inner, d, axes=("heads", "embed"), **kw)
        self.norm_q = RMSNorm(inner, eps=cfg.eps, axes=("heads",), param_dtype=param_dtype)
        self.norm_k = RMSNorm(inner, eps=cfg.eps, axes=("heads",), param_dtype=param_dtype)
        if added_kv:
            self.add_k_proj = Linear(cfg.added_kv_proj_dim, inner, axes=("embed", "heads"), **kw)
            self.add_v_proj = Linear(cfg.added_kv_proj_dim, inner, axes=("embed", "heads"), **kw)
            self.norm_added_k = RMSNorm(inner, eps=cfg.eps, axes=("heads",), param_dtype=param_dtype)
        else:
            self.add_k_proj = self.add_v_proj = self.norm_added_k = None

    def _heads(self, x_bnd):
        b, n, d = x_bnd.shape
        return x_bnd.reshape(b, n, self.heads, d // self.heads)

    def __call__(self, x_bnd, ctx_bld=None, ctx_mask_bl=None, rope=None, img_bmd=None):
        src = x_bnd if ctx_bld is None else ctx_bld
        q = self._heads(self.norm_q(checkpoint_name(self.to_q(x_bnd), "query_proj")))
        k = self._heads(self.norm_k(checkpoint_name(self.to_k(src), "key_proj")))
        v = self._heads(checkpoint_name(self.to_v(src), "value_proj"))
        if rope is not None:
            q = attn_lib.apply_rope(q, *rope)
            k = attn_lib.apply_rope(k, *rope)
        # Sequence-parallel (shard_map over the mesh's 'sequence' axis) when one is active, else local.
        kw = dict(block_q=self.block_q, splash_block=self.splash_block, strategy=self.strategy)
        o = seq_lib.attend(self.impl, q, k, v, ctx_mask_bl, kv_sharded=ctx_bld is None, **kw)
        if img_bmd is not None and self.add_k_proj is not None:
            ki = self._heads(self.norm_added_k(self.add_k_proj(img_bmd)))
            vi = self._heads(self.add_v_proj(img_bmd))
            o = o + seq_lib.attend(self.impl, q, ki, vi, None, kv_sharded=False, **kw)
        b, n = o.shape[:2]
        return self.to_out(checkpoint_name(o.reshape(b, n, -1), "attention_out"))


def _modulation(table_1kd, emb, k: int, *, shared: bool = False):
    """Adds a learned (1, k, D) table to a time embedding; returns k f32 tensors of (B, 1|N, D).

    ``emb`` is the time projection (B[, N], k·D) for the blocks, or, with
    ``shared=True``, the time embedding (B[, N], D) that every one of the k rows
    adds (the output head).
    """
    d = table_1kd.shape[-1]
    table = table_1kd[...].astype(jnp.float32)
    per_token = emb.ndim == 3
    lead = emb.shape[:-1]  # (B,) or (B, N)
    e = emb[..., None, :] if shared else emb.reshape(*lead, k, d)
    mod = (table[None] if per_token else table) + e  # (B[, N], k, D)
    if per_token:
        return [mod[:, :, i] for i in range(k)]
    return [mod[:, i : i + 1] for i in range(k)]


class TransformerBlock(nnx.Module):
    """diffusers ``WanTransformerBlock``."""

    def __init__(self, cfg: WanConfig, *, rngs):
        dtype, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        d = cfg.inner_dim
        self.norm1 = LayerNorm(d, eps=cfg.eps, affine=False)
        self.attn1 = Attention(cfg, added_kv=False, dtype=dtype, param_dtype=pdt, rngs=rngs)
        self.attn2 = Attention(cfg, added_kv=cfg.added_kv_proj_dim is not None, dtype=dtype, param_dtype=pdt,
                               rngs=rngs)
        self.norm2 = LayerNorm(d, eps=cfg.eps, affine=cfg.cross_attn_norm, param_dtype=pdt)
        self.ffn = FeedForward(d, cfg.ffn_dim, approximate=True, dtype=dtype, param_dtype=pdt, rngs=rngs)
        self.norm3 = LayerNorm(d, eps=cfg.eps, affine=False)
        self.scale_shift_table = param(
            rngs, lambda k, s, dt: jax.random.normal(k, s, dt) / math.sqrt(d), (1, 6, d), pdt,
            (None, None, "embed"))
        lora_lib.attach(self, cfg, rngs, prefix="blocks")  # inside the layer vmap: adapters get stacked too

    def __call__(self, x, ctx, ctx_mask, tproj, rope, img=None):
        shift, scale, gate, c_shift, c_scale, c_gate = _modulation(self.scale_shift_table, tproj, 6)
        dt = x.dtype
        # ops.scale_by: the broadcast products' gradients (d scale, d gate) are contractions (see ops.py).
        h = (ops.scale_by(self.norm1(x), 1.0 + scale) + shift).astype(dt)
        x = (x.astype(jnp.float32) + ops.scale_by(self.attn1(h, rope=rope).astype(jnp.float32), gate)).astype(dt)
        h = self.norm2(x).astype(dt)
        x = x + self.attn2(h, ctx, ctx_mask, img_bmd=img).astype(dt)
        h = (ops.scale_by(self.norm3(x), 1.0 + c_scale) + c_shift).astype(dt)
        x = (x.astype(jnp.float32) + ops.scale_by(self.ffn(h).astype(jnp.float32), c_gate)).astype(dt)
        return x


_ACT = ("act_batch", "act_tokens", "act_embed")  # the residual stream between blocks

_REMAT_POLICIES = {
    "full": None,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attention": jax.checkpoint_policies.save_only_these_names("attention_out"),
    "save_qkv_proj": jax.checkpoint_policies.save_only_these_names("query_proj", "key_proj", "value_proj"),
    # Full remat whose one saved tensor per layer, the block's input (the residual stream), lives in host memory
    # between the forward and the backward pass (MaxText's / MaxDiffusion's offload of the decoder-layer input):
    # HBM holds one layer's activations instead of num_layers residuals.
    "offload": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=["block_input"], offload_src="device",
        offload_dst="pinned_host"),
}


class WanTransformer3DModel(nnx.Module):
    """The Wan2.1 DiT. Call: ``model(x_bthwc, t, text_ble, text_mask_bl=None, image_bmc=None) -> v_bthwc``."""

    def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        d = cfg.inner_dim
        pt, ph, pw = cfg.patch_size
        self.patch_embedding = PatchEmbedding(cfg.patch_size, cfg.in_channels, d, param_dtype=pdt, rngs=rngs)
        self.condition_embedder = ConditionEmbedder(cfg, dtype=dtype, param_dtype=pdt, rngs=rngs)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(r):
            return TransformerBlock(cfg, rngs=r)

        self.blocks = make_blocks(rngs)
        self.norm_out = LayerNorm(d, eps=cfg.eps, affine=False)
        self.proj_out = Linear(d, cfg.out_channels * pt * ph * pw, axes=("embed", None), dtype=dtype,
                               param_dtype=pdt, rngs=rngs, kernel_init=zeros)
        self.scale_shift_table = param(
            rngs, lambda k, s, dt: jax.random.normal(k, s, dt) / math.sqrt(d), (1, 2, d), pdt, (None, None, "embed"))
        # Adapters last, so the base parameters are drawn identically with and without LoRA.
        lora_lib.attach(self, cfg, rngs, skip=("blocks",))
        if cfg.lora_rank and not nnx.state(self, lora_lib.LoRAParam):
            paths = lora_lib.linear_paths(self.blocks, "blocks") + [
                p for p in lora_lib.linear_paths(self) if not p.startswith("blocks.")]
            raise ValueError(f"WanConfig.lora_targets={cfg.lora_targets!r} matches no Linear layer (re.search over "
                             f"module paths); the paths are: {', '.join(paths)}")

    # -- input checks -------------------------------------------------------------------------
    def _check(self, x, t, text, text_mask, image):
        cfg = self.cfg
        if x.ndim != 5:
            raise ValueError(f"x must be (B, T, H, W, C) channels-last, got shape {x.shape}")
        b, tt, hh, ww, c = x.shape
        if c != cfg.in_channels:
            raise ValueError(f"x has {c} channels but the model's in_channels is {cfg.in_channels}")
        for name, size, p in (("T", tt, cfg.patch_size[0]), ("H", hh, cfg.patch_size[1]),
                              ("W", ww, cfg.patch_size[2])):
            if size % p:
                raise ValueError(f"x {name}={size} is not divisible by the patch size {p} "
                                 f"(patch_size={cfg.patch_size})")
        n = (tt // cfg.patch_size[0]) * (hh // cfg.patch_size[1]) * (ww // cfg.patch_size[2])
        if t.shape not in ((b,), (b, n)):
            raise ValueError(f"timestep must be (B,)=({b},) or per-token (B, N)=({b}, {n}), got {t.shape}")
        if text.ndim != 3 or text.shape[0] != b or text.shape[-1] != cfg.text_dim:
            raise ValueError(f"text must be (B={b}, L, text_dim={cfg.text_dim}), got {text.shape}")
        if text_mask is not None and text_mask.shape != text.shape[:2]:
            raise ValueError(f"text_mask must be {text.shape[:2]}, got {text_mask.shape}")
        if image is not None:
            if cfg.image_dim is None:
                raise ValueError("image tokens given but the model has no image_dim (not an I2V config)")
            if image.ndim != 3 or image.shape[0] != b or image.shape[-1] != cfg.image_dim:
                raise ValueError(f"image must be (B={b}, M, image_dim={cfg.image_dim}), got {image.shape}")

    def __call__(self, x_bthwc, t, text_ble, text_mask_bl=None, image_bmc=None):
        cfg = self.cfg
        self._check(x_bthwc, t, text_ble, text_mask_bl, image_bmc)
        dtype = jnp.dtype(cfg.dtype)
        b, tt, hh, ww, c = x_bthwc.shape
        pt, ph, pw = cfg.patch_size
        gt, gh, gw = tt // pt, hh // ph, ww // pw

        # Patchify row-major over (t, h, w); features ordered (pt, ph, pw, C) like the Conv3d kernel.
        p = x_bthwc.reshape(b, gt, pt, gh, ph, gw, pw, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
        p = p.reshape(b, gt * gh * gw, pt * ph * pw * c)
        kern = self.patch_embedding.kernel[...].reshape(-1, cfg.inner_dim)
        h = jnp.einsum("bnp,pd->bnd", p.astype(dtype), kern.astype(dtype))
        h = h + self.patch_embedding.bias[...].astype(dtype)

        temb, tproj, ctx, img = self.condition_embedder(t, text_ble, image_bmc)
        ctx = ctx.astype(dtype)
        img = None if img is None else img.astype(dtype)
        cos, sin = attn_lib.rope_tables((gt, gh, gw), cfg.rope_dims, max_seq_len=cfg.rope_max_seq_len)
        rope = (jnp.asarray(cos), jnp.asarray(sin))

        h = self._run_blocks(h, ctx, text_mask_bl, tproj, rope, img)

        shift, scale = _modulation(self.scale_shift_table, temb, 2, shared=True)
        h = (ops.scale_by(self.norm_out(h), 1.0 + scale) + shift).astype(dtype)
        out = self.proj_out(h)  # (B, N, pt·ph·pw·C_out)
        out = out.reshape(b, gt, gh, gw, pt, ph, pw, cfg.out_channels).transpose(0, 1, 4, 2, 5, 3, 6, 7)
        return out.reshape(b, tt, hh, ww, cfg.out_channels).astype(jnp.float32)

    def _run_blocks(self, h, ctx, ctx_mask, tproj, rope, img):
        cfg = self.cfg
        graphdef, state = nnx.split(self.blocks)

        def body(h, layer_state):
            block = nnx.merge(graphdef, layer_state)
            h = checkpoint_name(h, "block_input")  # what remat='offload' keeps, in host memory
            return constrain(block(h, ctx, ctx_mask, tproj, rope, img), _ACT)

        h = constrain(h, _ACT)
        if tproj.ndim == 3:  # per-token modulation (B, N, 6D) follows the tokens
            tproj = constrain(tproj, ("act_batch", "act_tokens", None))

        if cfg.remat != "none":
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            h, _ = jax.lax.scan(lambda c, s: (body(c, s), None), h, state)
            return h
        for i in range(cfg.num_layers):
            h = body(h, jax.tree.map(functools.partial(lambda i, a: a[i], i), state))
        return h
