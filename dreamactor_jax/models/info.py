"""Parameter counts and a per-module table, from ``eval_shape`` (nothing is allocated)."""

from __future__ import annotations

import collections

from flax import nnx

from dreamactor_jax.models.build import abstract_model
from dreamactor_jax.models.config import get_preset


def module_table(preset: str, depth: int = 2) -> tuple[int, list[tuple[str, int, str]]]:
    """(total, rows of (module path, params, example shape)) grouped at ``depth`` path segments."""
    cfg = get_preset(preset)
    state = nnx.state(abstract_model(cfg), nnx.Param)
    counts: dict[str, int] = collections.OrderedDict()
    shapes: dict[str, str] = {}
    total = 0
    for path, var in nnx.to_flat_state(state):
        value = var.get_value()
        key = ".".join(str(p) for p in path[:depth])
        counts[key] = counts.get(key, 0) + value.size
        shapes.setdefault(key, f"{'.'.join(str(p) for p in path[depth:]) or '-'} {tuple(value.shape)}")
        total += value.size
    return total, [(k, v, shapes[k]) for k, v in counts.items()]


def report(preset: str, depth: int = 2) -> str:
    total, rows = module_table(preset, depth)
    cfg = get_preset(preset)
    width = max(len(r[0]) for r in rows)
    lines = [f"preset: {preset}", f"params: {total}",
             f"layers: {cfg.num_layers}  width: {cfg.inner_dim}  heads: {cfg.num_attention_heads}x"
             f"{cfg.attention_head_dim}  ffn: {cfg.ffn_dim}  in/out channels: {cfg.in_channels}/{cfg.out_channels}",
             "", f"{'module':<{width}}  {'params':>14}  {'share':>6}  first tensor (blocks stacked on axis 0)"]
    for name, n, shape in rows:
        lines.append(f"{name:<{width}}  {n:>14,}  {100 * n / total:5.1f}%  {shape}")
    return "\n".join(lines)
