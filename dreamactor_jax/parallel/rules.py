"""Logical-axis sharding rules: the model names axes, the config maps names to mesh axes.

Every parameter carries a tuple of logical axis names in its ``nnx.Param``
metadata ``out_sharding`` (``'layers'``, ``'embed'``, ``'embed_out'``,
``'heads'``, ``'mlp'`` or ``None``); activations are constrained with names
``act_*``. A rule set is a sequence of ``(logical name, mesh axis | tuple of
mesh axes | None)`` pairs. A logical name may appear more than once: the pairs
are candidates tried in order, and the first one that can shard the dimension
wins (so ``('heads', 'tensor'), ('heads', 'fsdp')`` shards a per-head bias over
fsdp when the tensor axis has size 1).

A candidate is reduced before it is used, per dimension, left to right:

* mesh axes already used by an earlier dimension of the same spec are dropped
  (a mesh axis can shard only one dimension of an array);
* mesh axes of size 1, or absent from the mesh, are dropped (they shard nothing;
  dropping them lets the next candidate apply);
* if the product of the remaining axis sizes does not divide the dimension,
  trailing axes are dropped until it does; if none are left the next candidate
  is tried, and after the last one the dimension is replicated.

Why replicate instead of failing on an indivisible dimension: ``jit``
``in_shardings``/``out_shardings`` and ``device_put`` require every sharded
dimension to be a multiple of its mesh axes' product, and the same rules must
serve every preset on every mesh (the tiny preset's 36-channel patch features,
a 40-head model on tensor=16, a batch of 2 on data x fsdp = 8). Replicating one
dimension is always correct; what it costs in memory is made visible by
:func:`sharding_table` and bounded by :func:`check_replicated_bytes`, which
fails the run when too many parameter bytes end up copied on every fsdp shard.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]

DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    # --- parameters ---
    # The stacked-block axis stays whole: scan slices one layer per step, and a
    # layer axis sharded across devices would serialise the scan on one device.
    ("layers", None),
    # FSDP (ZeRO-3) shards the model width of every matrix, over the sequence axis too when there is one:
    # sequence groups hold the same parameters, so they can share the sharding (as MaxText does).
    ("embed", ("fsdp", "sequence")),
    ("heads", "tensor"),  # Megatron tensor parallelism: q/k/v columns, out rows
    ("heads", "fsdp"),  # ... else per-head vectors (biases, qk norms) go over fsdp
    ("mlp", "tensor"),
    ("mlp", "fsdp"),
    ("embed_out", "tensor"),  # second matrix of a (D, D) pair whose first dim is 'embed'
    ("embed_out", "fsdp"),
    # --- activations ---
    ("act_batch", ("data", "fsdp")),
    ("act_tokens", "sequence"),
    ("act_embed", None),  # the residual stream is whole between blocks (Megatron style)
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
)

_current_rules: list[Rules] = [DEFAULT_RULES]


def normalize_rules(rules: Any) -> tuple[tuple[str, MeshAxes], ...]:
    """Validates a rule set from a config (lists from JSON or flag overrides become tuples)."""
    out = []
    for i, item in enumerate(rules):
        if isinstance(item, str) or len(item) != 2 or not isinstance(item[0], str):
            raise ValueError(f"sharding rule #{i} {item!r} must be a (logical name, mesh axes) pair")
        logical, mesh_axes = item
        if mesh_axes is not None and not isinstance(mesh_axes, str):
            mesh_axes = tuple(mesh_axes)
            if not all(isinstance(a, str) for a in mesh_axes):
                raise ValueError(f"sharding rule #{i} {item!r}: mesh axes must be a name, names or None")
        out.append((logical, mesh_axes))
    return tuple(out)


@contextlib.contextmanager
def use_rules(rules: Rules) -> Iterator[Rules]:
    """Makes ``rules`` the rule set :func:`constrain` uses while tracing inside this context."""
    rules = normalize_rules(rules)
    _current_rules.append(rules)
    try:
        yield rules
    finally:
        _current_rules.pop()


def current_rules() -> Rules:
    return _current_rules[-1]


def _axis_sizes(mesh: Any) -> dict[str, int] | None:
    """{mesh axis: size} from a Mesh, an AbstractMesh or a mapping; None when unknown."""
    if mesh is None:
        return None
    if isinstance(mesh, Mapping):
        return {str(k): int(v) for k, v in mesh.items()}
    return {str(k): int(v) for k, v in dict(mesh.shape).items()}


def _candidates(name: str, rules: Rules) -> list[tuple[str, ...]]:
    found = [m for logical, m in rules if logical == name]
    if not found:
        raise ValueError(f"logical axis {name!r} has no rule in the sharding rules; add ({name!r}, None) "
                         f"to replicate it. Rules: {tuple(rules)}")
    return [() if m is None else ((m,) if isinstance(m, str) else tuple(m)) for m in found]


def resolve_dim(name: str | None, dim: int | None, used: set[str], sizes: Mapping[str, int] | None,
                rules: Rules) -> tuple[str, ...]:
    """Mesh axes that shard one dimension (possibly empty), following the module docstring's reduction."""
    if name is None:
        return ()
    for cand in _candidates(name, rules):
        axes = [a for a in cand if a not in used and (sizes is None or sizes.get(a, 1) > 1)]
        if sizes is not None and dim is not None:
            while axes and dim % math.prod(sizes[a] for a in axes):
                axes.pop()
        if axes:
            return tuple(axes)
    return ()


def logical_to_spec(axes: Sequence[str | None], rules: Rules | None = None, *, mesh: Any = None,
                    shape: Sequence[int] | None = None) -> P:
    """PartitionSpec for an array whose dimensions have logical names ``axes``.

    Args:
      axes: one logical name (or None) per dimension.
      rules: the rule set; default :func:`current_rules`.
      mesh: a Mesh, AbstractMesh or {axis: size}; without it sizes are unknown
        and only the no-reuse reduction applies.
      shape: the array's shape; with ``mesh``, indivisible dimensions replicate.

    Returns:
      A PartitionSpec with one entry per dimension: None, a mesh axis name, or
      a tuple of mesh axis names.
    """
    rules = current_rules() if rules is None else rules
    axes = tuple(axes)
    if shape is not None and len(shape) != len(axes):
        raise ValueError(f"logical axes {axes} do not match shape {tuple(shape)}")
    sizes = _axis_sizes(mesh)
    used: set[str] = set()
    entries: list[MeshAxes] = []
    for i, name in enumerate(axes):
        got = resolve_dim(name, None if shape is None else int(shape[i]), used, sizes, rules)
        used.update(got)
        entries.append(None if not got else (got[0] if len(got) == 1 else got))
    return P(*entries)


# --- parameters --------------------------------------------------------------------------------------------------


def _variables(abstract: Any) -> list[tuple[tuple, Any]]:
    """[(path, Variable)] from an nnx Module or State, in ``to_flat_state`` order."""
    if isinstance(abstract, nnx.Module):
        abstract = nnx.state(abstract)
    if not isinstance(abstract, nnx.State):
        raise TypeError("param_shardings/logical_axes need the logical axes, which live in the nnx metadata: pass "
                        "the abstract model (build.abstract_model(cfg)) or nnx.state(...) of it, not the pure dict "
                        f"of arrays (got {type(abstract).__name__})")
    return [(tuple(path), var) for path, var in nnx.to_flat_state(abstract)]


def _var_axes(var: Any, ndim: int) -> tuple[str | None, ...]:
    meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
    axes = meta.get("out_sharding", meta.get("sharding_names"))
    if axes is None:  # an unannotated variable is replicated (and shows up in check_replicated_bytes)
        return (None,) * ndim
    return tuple(axes)


def _nest(flat: Sequence[tuple[tuple, Any]]) -> dict:
    """Nested dict from (path, leaf) pairs: the layout of ``nnx.to_pure_dict``."""
    out: dict = {}
    for path, leaf in flat:
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = leaf
    return out


def logical_axes(abstract: Any) -> dict[tuple, tuple[str | None, ...]]:
    """{path: logical axes} of every variable of an nnx Module or State (paths as in ``to_flat_state``)."""
    out = {}
    for path, var in _variables(abstract):
        shape = var.get_value().shape
        out[path] = _var_axes(var, len(shape))
    return out


def param_shardings(abstract: Any, mesh: jax.sharding.Mesh, rules: Rules | None = None) -> dict:
    """NamedShardings for the params pure dict that ``build.split_params`` returns.

    Args:
      abstract: the abstract model (``build.abstract_model(cfg)``) or its ``nnx.state``.
      mesh: the device mesh.
      rules: the rule set; default :func:`current_rules`.

    Returns:
      A nested dict of NamedSharding with the structure of the params pure dict.
    """
    rules = current_rules() if rules is None else rules
    flat = []
    for path, var in _variables(abstract):
        shape = var.get_value().shape
        spec = logical_to_spec(_var_axes(var, len(shape)), rules, mesh=mesh, shape=shape)
        flat.append((path, NamedSharding(mesh, spec)))
    return _nest(flat)


def tree_shardings(tree: Any, params: Any, shardings: Any, mesh: jax.sharding.Mesh) -> Any:
    """Shardings for a tree that contains params-shaped subtrees (a TrainState, optimizer moments, an EMA).

    Every subtree with the params' structure and shapes gets ``shardings``; any
    other leaf (step counters, schedule state) is replicated.
    """
    p_def = jax.tree.structure(params)
    p_shapes = [np.shape(x) for x in jax.tree.leaves(params)]
    replicated = NamedSharding(mesh, P())

    def like_params(x) -> bool:
        if p_def.num_leaves < 2:
            return False
        leaves, tdef = jax.tree.flatten(x)
        return tdef == p_def and [np.shape(leaf) for leaf in leaves] == p_shapes

    return jax.tree.map(lambda x: shardings if like_params(x) else replicated, tree, is_leaf=like_params)


# --- reporting and guards ----------------------------------------------------------------------------------------


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _shard_bytes(x: Any, sharding: NamedSharding) -> int:
    shape = tuple(np.shape(x))
    return int(math.prod(sharding.shard_shape(shape)) * np.dtype(x.dtype).itemsize)


def _rows(params: Any, shardings: Any) -> list[tuple[str, Any, NamedSharding]]:
    p_flat, p_def = jax.tree_util.tree_flatten_with_path(params)
    s_flat = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
    if len(s_flat) != len(p_flat):
        raise ValueError(f"shardings have {len(s_flat)} leaves but params have {len(p_flat)}: build both from the "
                         "same model (param_shardings(abstract_model(cfg), ...) with split_params(...)[1])")
    return [(_path_str(path), x, s) for (path, x), s in zip(p_flat, s_flat)]


def _uses_axis(sharding: NamedSharding, axis: str) -> bool:
    for entry in sharding.spec:
        if entry == axis or (isinstance(entry, tuple) and axis in entry):
            return True
    return False


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def sharding_table(params: Any, shardings: Any, *, fsdp_axis: str = "fsdp") -> str:
    """A start-up overview: one row per parameter (path, shape, dtype, spec, bytes per device) and totals.

    ``params`` may hold arrays or ShapeDtypeStructs.
    """
    rows = _rows(params, shardings)
    header = ("path", "shape", "dtype", "spec", "bytes/device")
    table = [header]
    total = per_device = replicated = 0
    for path, x, s in rows:
        nbytes = int(math.prod(np.shape(x)) * np.dtype(x.dtype).itemsize)
        dev = _shard_bytes(x, s)
        total += nbytes
        per_device += dev
        if not _uses_axis(s, fsdp_axis):
            replicated += dev
        spec = "(" + ", ".join("None" if e is None else str(e) for e in s.spec) + ")"
        table.append((path, str(tuple(np.shape(x))), str(np.dtype(x.dtype)), spec, _fmt_bytes(dev)))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    n = sum(int(math.prod(np.shape(x))) for _, x, _ in rows)
    lines.append(f"{len(rows)} arrays, {n:,} parameters, {_fmt_bytes(total)} total, {_fmt_bytes(per_device)} per "
                 f"device, {_fmt_bytes(replicated)} per device not sharded over '{fsdp_axis}'")
    return "\n".join(lines)


class ReplicatedParamsError(ValueError):
    """Too many parameter bytes are copied on every fsdp shard."""


def check_replicated_bytes(params: Any, shardings: Any, mesh: jax.sharding.Mesh, tolerance_bytes: int, *,
                           fsdp_axis: str = "fsdp") -> int:
    """Fails when fsdp > 1 and the per-device bytes of params not sharded over fsdp exceed the tolerance.

    With FSDP every matrix should be split over ``fsdp_axis``; a parameter
    whose spec does not use it is stored whole (or only tensor-split) on every
    fsdp shard, so its bytes do not shrink as fsdp grows. A few biases and
    norm weights are expected; a misnamed logical axis or a missing rule
    replicating a large matrix is not, and would silently cost memory.

    Returns:
      The replicated bytes per device (0 when the fsdp axis has size 1).

    Raises:
      ReplicatedParamsError: naming the largest offenders.
    """
    if dict(mesh.shape).get(fsdp_axis, 1) <= 1:
        return 0
    offenders = []
    for path, x, s in _rows(params, shardings):
        if not _uses_axis(s, fsdp_axis):
            offenders.append((_shard_bytes(x, s), path, tuple(np.shape(x)), s.spec))
    replicated = sum(o[0] for o in offenders)
    if replicated > tolerance_bytes:
        offenders.sort(key=lambda o: -o[0])
        top = "\n".join(f"  {path} {shape} spec={spec}: {_fmt_bytes(b)}" for b, path, shape, spec in offenders[:10])
        raise ReplicatedParamsError(
            f"{_fmt_bytes(replicated)} of parameters per device are not sharded over '{fsdp_axis}' (mesh "
            f"{dict(mesh.shape)}), above the tolerance of {_fmt_bytes(tolerance_bytes)}. Largest:\n{top}\n"
            "Give these parameters logical axes with an fsdp rule (or dimensions divisible by the mesh axis), "
            "or raise the tolerance.")
    return replicated


# --- activations -------------------------------------------------------------------------------------------------


def constrain(x: jax.Array, logical_axes: Sequence[str | None], rules: Rules | None = None) -> jax.Array:
    """Sharding constraint on an activation by logical names; a no-op outside a mesh context.

    The mesh context is ``jax.set_mesh(mesh)``. Inside ``shard_map`` the manual
    axes are left out (the array is already split over them). Dimensions that
    do not divide stay unconstrained-replicated, as for parameters.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    sizes = {n: s for n, s, t in zip(mesh.axis_names, mesh.axis_sizes, mesh.axis_types) if t != AxisType.Manual}
    if all(s == 1 for s in sizes.values()):
        return x
    spec = logical_to_spec(logical_axes, rules, mesh=sizes, shape=x.shape)
    used = {a for e in spec if e is not None for a in ((e,) if isinstance(e, str) else e)}
    if used and all(mesh.axis_types[mesh.axis_names.index(a)] == AxisType.Explicit for a in used):
        return jax.sharding.reshard(x, spec)
    return jax.lax.with_sharding_constraint(x, spec)


class ReplicatedActivationsError(ValueError):
    """The batch or the token count does not divide over its mesh axes, so activations would be replicated."""


def check_activations(batch_size: int, tokens: int, mesh: Any, rules: Rules | None = None, *,
                      width: int = 1 << 20, allow: bool = False, exempt: Sequence[str] = ("tensor",)) -> int:
    """Fails when the residual stream ``(batch, tokens, width)`` would be computed on several devices at once.

    The rules replicate a dimension that does not divide (see the module docstring). For parameters that is
    bounded by :func:`check_replicated_bytes`; for activations it means every block runs N times over: a batch
    of 8 on fsdp=64 leaves all 64 chips holding the whole batch. Every mesh axis of size > 1 must shard one
    of the stream's dimensions, except ``exempt`` ones (tensor parallelism keeps the residual stream whole
    between blocks by design).

    Returns:
      The replication factor (1 when every axis shards something).

    Raises:
      ReplicatedActivationsError: naming the batch size, the mesh and the fix, unless ``allow``.
    """
    rules = current_rules() if rules is None else rules
    sizes = _axis_sizes(mesh) or {}
    spec = logical_to_spec(("act_batch", "act_tokens", "act_embed"), rules, mesh=sizes,
                           shape=(batch_size, tokens, width))
    used = {a for e in spec if e is not None for a in ((e,) if isinstance(e, str) else e)}
    idle = {a: s for a, s in sizes.items() if s > 1 and a not in used and a not in exempt}
    factor = math.prod(idle.values())
    if factor == 1 or allow:
        return factor
    hints = []
    batch_axes = [a for a in _candidates("act_batch", rules)[0] if sizes.get(a, 1) > 1]
    per = math.prod(sizes[a] for a in batch_axes)
    if batch_axes and batch_size % per:
        hints.append(f"config.data.batch_size={batch_size} is not a multiple of {' x '.join(batch_axes)} = {per}: "
                     f"use a batch of {per * max(1, -(-batch_size // per))} (or any multiple of {per}), or move "
                     f"devices from {'/'.join(batch_axes)} to mesh.sequence or mesh.tensor")
    token_axes = [a for a in _candidates("act_tokens", rules)[0] if sizes.get(a, 1) > 1]
    per_t = math.prod(sizes[a] for a in token_axes)
    if token_axes and tokens % per_t:
        hints.append(f"the {tokens} tokens per example do not divide over {' x '.join(token_axes)} = {per_t}: "
                     "change the frames/resolution or mesh.sequence")
    if not hints:
        hints.append(f"no rule shards the residual stream over {sorted(idle)}")
    raise ReplicatedActivationsError(
        f"the residual stream (batch {batch_size}, {tokens} tokens) would be replicated {factor}x: mesh axes "
        f"{idle} shard none of its dimensions on mesh {sizes}. " + "; ".join(hints) +
        ". To accept the replication, set config.mesh.allow_replicated_activations=True.")
