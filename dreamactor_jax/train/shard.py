"""Sharding plan of a run: parameter, train-state and batch shardings on one mesh, from the logical rules."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
from jax.sharding import NamedSharding

from dreamactor_jax.models.build import abstract_model
from dreamactor_jax.models.config import WanConfig
from dreamactor_jax.parallel import rules as rules_lib
from dreamactor_jax.train import state as state_lib


@dataclasses.dataclass
class ShardingPlan:
    mesh: jax.sharding.Mesh
    params: Any  # NamedShardings, structure of the params pure dict
    state: Any  # NamedShardings, structure of the TrainState
    batch: Any  # NamedShardings, structure of the batch dict
    rules: tuple


def config_plan(mcfg: WanConfig, mesh: jax.sharding.Mesh, state: Any, batch: Any,
                config: ml_collections.ConfigDict) -> ShardingPlan:
    """:func:`plan` with a run config's rules and EMA placement (``config.optim.ema_on_host``)."""
    return plan(mcfg, mesh, state, batch, rules=config_rules(config),
                ema_on_host=bool(config.optim.get("ema_on_host", False)))


def config_rules(config: ml_collections.ConfigDict) -> tuple:
    """The rule set of a run: ``config.mesh.rules`` (a list of [logical, mesh axes]) or the defaults."""
    custom = config.mesh.get("rules") if "rules" in config.mesh else None
    return rules_lib.normalize_rules(custom) if custom else rules_lib.DEFAULT_RULES


def batch_sharding(mesh: jax.sharding.Mesh, batch: Any, rules: tuple | None = None) -> Any:
    """Batch dimension as the rules shard ``act_batch`` ((data, fsdp) by default, the prefix that divides it);
    everything else replicated."""
    def one(x):
        axes = ("act_batch",) + (None,) * (len(x.shape) - 1)
        return NamedSharding(mesh, rules_lib.logical_to_spec(axes, rules, mesh=mesh, shape=x.shape))

    return jax.tree.map(one, batch)


def plan(mcfg: WanConfig, mesh: jax.sharding.Mesh, state: Any, batch: Any, rules: tuple | None = None, *,
         ema_on_host: bool = False) -> ShardingPlan:
    """Shardings for the params, the whole train state (moments and EMA shard like params) and the batch.

    ``ema_on_host``: the EMA's shardings name host memory (``pinned_host``): it never occupies HBM, and the step
    updates it on the host CPU (``train/step.py:update_ema``).
    """
    rules = tuple(rules or rules_lib.DEFAULT_RULES)
    p = rules_lib.param_shardings(abstract_model(mcfg), mesh, rules)
    # Moments and EMA shard like what they track (with LoRA: like each adapter's base kernel).
    s = state_lib.shardings(state, p, mesh)
    if ema_on_host and s.ema is not None:
        s = s.replace(ema=jax.tree.map(lambda sh: sh.with_memory_kind("pinned_host"), s.ema))
    return ShardingPlan(mesh=mesh, params=p, state=s, batch=batch_sharding(mesh, batch, rules), rules=rules)
