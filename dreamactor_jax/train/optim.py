"""Optimizer: AdamW with warmup + constant/cosine schedule, clipping, and a weight-decay mask."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax

SCHEDULES = ("constant", "cosine")
# Parameters that get no weight decay: biases, norm weights and the adaLN tables.
_NO_DECAY_LEAVES = ("bias", "weight", "scale_shift_table")


def learning_rate_schedule(lr: float, warmup_steps: int, total_steps: int, schedule: str = "constant",
                           final_lr_fraction: float = 0.0) -> optax.Schedule:
    if schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {schedule!r}")
    warm = optax.linear_schedule(0.0, lr, max(warmup_steps, 1)) if warmup_steps > 0 else optax.constant_schedule(lr)
    if schedule == "constant":
        rest = optax.constant_schedule(lr)
    else:
        rest = optax.cosine_decay_schedule(lr, max(total_steps - warmup_steps, 1), alpha=final_lr_fraction)
    return optax.join_schedules([warm, rest], [warmup_steps]) if warmup_steps > 0 else rest


def decay_mask(params: dict) -> Any:
    """True for leaves that get weight decay (matrices), False for biases/norms/tables.

    By leaf name, so it applies to whatever the optimizer is built over: the whole params,
    or with LoRA only the adapters (``lora_a``/``lora_b`` are matrices: decayed).
    """
    def mask(path, _):
        leaf = str(getattr(path[-1], "key", path[-1]))
        return leaf not in _NO_DECAY_LEAVES
    return jax.tree_util.tree_map_with_path(mask, params)


def make_optimizer(optim: Mapping[str, Any], total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW from the config's ``optim`` section; returns (transformation, schedule).

    The transformation is applied to the trainable part of the params only
    (``state.trainable``: everything, or the LoRA adapters), so with LoRA its state is adapter-sized.
    """
    sched = learning_rate_schedule(optim["lr"], optim["warmup_steps"], total_steps, optim["schedule"],
                                   optim.get("final_lr_fraction", 0.0))
    parts = []
    if optim.get("grad_clip_norm"):
        parts.append(optax.clip_by_global_norm(optim["grad_clip_norm"]))
    parts.append(optax.adamw(sched, b1=optim["b1"], b2=optim["b2"], eps=optim["eps"],
                             weight_decay=optim["weight_decay"], mask=decay_mask))
    return optax.chain(*parts), sched
