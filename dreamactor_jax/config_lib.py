"""Shared pieces of the ml-collections configs in ``configs/`` and their validation.

Every field has a default and a comment. ``model`` lists every architecture
and runtime field of :class:`~dreamactor_jax.models.config.WanConfig` with
``None`` meaning "the preset's value", so any of them can be overridden from
the command line (``--config.model.num_layers=4``) on a locked config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

from dreamactor_jax.diffusion.objective import ObjectiveConfig
from dreamactor_jax.models.config import WanConfig

_FIELD_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def model_section(preset: str, **overrides) -> ml_collections.ConfigDict:
    """``config.model``: a preset name plus typed placeholders for every WanConfig field."""
    m = ml_collections.ConfigDict()
    m.preset = preset  # name from dreamactor_jax.models.config.PRESETS
    for f in dataclasses.fields(WanConfig):
        if f.name == "patch_size":
            m.patch_size = config_dict.placeholder(tuple)
            continue
        tname = str(f.type).replace(" | None", "")
        m[f.name] = config_dict.placeholder(_FIELD_TYPES.get(tname, object))
    for k, v in overrides.items():
        if k not in m:
            raise ValueError(f"model_section: unknown model field {k!r}")
        m[k] = v
    return m


def objective_section(**overrides) -> ml_collections.ConfigDict:
    o = ml_collections.ConfigDict(dataclasses.asdict(ObjectiveConfig()))
    o.update(overrides)
    return o


def optim_section(**overrides) -> ml_collections.ConfigDict:
    o = ml_collections.ConfigDict()
    o.lr = 5e-5  # peak learning rate (paper: AdamW 5e-5)
    o.warmup_steps = 0  # linear warmup from 0
    o.schedule = "constant"  # "constant" | "cosine" after warmup
    o.final_lr_fraction = 0.0  # cosine floor as a fraction of lr
    o.b1 = 0.9
    o.b2 = 0.999
    o.eps = 1e-8
    o.weight_decay = 0.01  # paper: 0.01; not applied to biases, norms, adaLN tables
    o.grad_clip_norm = 1.0  # global-norm clipping; 0 disables
    o.microbatches = 1  # gradient accumulation: the batch is split into this many equal slices
    o.ema_decay = 0.0  # EMA of params kept in the state when > 0 (e.g. 0.9999)
    # Keep the EMA in host memory (pinned_host) and update it on the host CPU: frees 4 bytes per trainable
    # parameter of HBM (a 14B full fine-tune on 4 chips: 13 GiB per chip) for one host copy of the params per step
    o.ema_on_host = False
    o.update(overrides)
    return o


def train_section(**overrides) -> ml_collections.ConfigDict:
    """``config.train``: length, logging, checkpointing, where the run starts, and non-finite handling."""
    t = ml_collections.ConfigDict()
    t.steps = 1000  # optimizer updates (counting skipped ones: the step is the data position)
    t.log_every = 10  # steps between metric lines (every step is still checked for non-finite values)
    t.checkpoint_every = 100  # steps between checkpoints (also at the end and on preemption)
    t.keep_checkpoints = 3  # newest checkpoints kept; 0 keeps all
    t.keep_period = 0  # also keep every checkpoint whose step is a multiple of this (0: off)
    # Where the run starts when workdir/checkpoints holds no checkpoint (a checkpoint there always wins):
    t.resume_from = ""  # another run's checkpoint dir (or workdir): full state (params, opt, EMA, step)
    t.init_from = ""  # checkpoint dir with at least `params` (an import, an earlier stage): params only, step 0
    t.skip_nonfinite_steps = False  # False: a non-finite loss/grad norm stops the run; True: drop that update
    # Watching the run (train/observe.py, train/preview.py); process 0 writes everything.
    t.tensorboard = True  # TensorBoard events in workdir/tensorboard (clu; needs TensorFlow); metrics.jsonl always
    t.peak_flops_per_device = 0.0  # MFU denominator; 0: by device kind (train/flops.py), none known for CPUs
    t.preview_every = 0  # steps between sample previews (workdir/previews/*.gif + TensorBoard images); 0: off
    t.preview_examples = 2  # fixed examples per preview
    t.preview_steps = 8  # sampler steps per preview
    t.preview_method = "unipc"  # sampler of the previews (diffusion.sampler.SAMPLERS); optional preview_shift (σ
    # shift, default 3.0) and preview_guidance (default 1.0) may be set too; previews play at the data's fps
    t.preview_source = "validation"  # "validation" (held-out procedural clips) | "train" (training batch 0)
    t.profile_steps = ""  # "A:B": jax.profiler trace of steps A..B (inclusive, as logged) into workdir/profile
    # Persistent XLA compilation cache (local path or gs://; train/compile_cache.py): restarts load the compiled
    # step. "" off here; launch/train.py and launch/curriculum.py default it to ~/.cache/dreamactor_jax/xla;
    # "off" keeps it off there too
    t.compilation_cache_dir = ""
    t.update(overrides)
    return t


def mesh_section(**sizes) -> ml_collections.ConfigDict:
    """``config.mesh``: axis sizes; one may be -1 (all remaining devices)."""
    m = ml_collections.ConfigDict()
    m.data = 1  # pure data parallelism (replicated params)
    m.fsdp = 1  # params, grads and optimizer state sharded; batch also split over it
    m.tensor = 1  # heads / mlp split (Megatron-style)
    m.sequence = 1  # tokens split (sequence-parallel attention)
    m.rules = ()  # logical-axis rules as [[logical, mesh_axes], ...]; empty = parallel.rules.DEFAULT_RULES
    m.max_replicated_bytes = 64 * 2**20  # fail when fsdp > 1 and more param bytes than this are not fsdp-sharded
    m.log_shardings = False  # print the per-parameter sharding table at start
    # Opt-in to a batch (or token count) that does not divide over its mesh axes: the rules then replicate the
    # activations over the leftover devices (the residual stream computed N times). Off: that is an error.
    m.allow_replicated_activations = False
    # Of each axis' size, the factor that runs across TPU slices / hosts over DCN (parallel/mesh.py); the
    # product is the number of slices (hosts where there is one slice). Multi-slice: dcn_data = slices.
    m.dcn_data = 1
    m.dcn_fsdp = 1
    m.dcn_tensor = 1
    m.dcn_sequence = 1
    m.update(sizes)
    return m


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks cross-field consistency; errors name the field."""
    from dreamactor_jax.models.build import model_config

    mcfg = model_config(config.model)
    ObjectiveConfig(**config.objective)
    d = config.data
    from dreamactor_jax.data import sources

    if d.source not in sources.SOURCES:
        raise ValueError(f"config.data.source={d.source!r} is unknown; available: {sources.SOURCES}")
    if d.stage not in (1, 2):
        raise ValueError(f"config.data.stage must be 1 (pose) or 2 (RGB driving), got {d.stage}")
    for f in ("batch_size", "frames", "height", "width", "channels", "text_len"):
        if int(d[f]) < 1:
            raise ValueError(f"config.data.{f} must be positive, got {d[f]}")
    from dreamactor_jax.data.components import check_sizes

    check_sizes(config, mcfg)
    pt, ph, pw = mcfg.patch_size
    if not 0.0 <= float(d.get("records_pose_augment_prob", 0.0)) <= 1.0:
        raise ValueError(f"config.data.records_pose_augment_prob must be in [0, 1], got {d.records_pose_augment_prob}")
    if int(d.get("prefetch", 0)) < 0:
        raise ValueError(f"config.data.prefetch must be >= 0 (0: off), got {d.prefetch}")
    if not 0 <= d.motion_masked_frames < d.frames:
        raise ValueError(f"config.data.motion_masked_frames must be in [0, frames), got {d.motion_masked_frames}")
    m = config.mesh
    if m.sequence > 1:
        heads_per_tensor = mcfg.num_attention_heads // max(m.tensor, 1)
        if mcfg.sequence_parallel == "ulysses" and heads_per_tensor % m.sequence:
            raise ValueError(f"config.mesh.sequence={m.sequence}: Ulysses attention needs the heads per tensor shard "
                             f"({mcfg.num_attention_heads} / tensor {m.tensor}) divisible by it; use "
                             "config.model.sequence_parallel='ring' or another mesh")
        tokens = (d.frames // pt) * (d.height // ph) * (2 * d.width // pw)
        if tokens % m.sequence:
            raise ValueError(f"config.mesh.sequence={m.sequence} does not divide the {tokens} canvas tokens")
    o = config.optim
    if o.microbatches < 1 or d.batch_size % o.microbatches:
        raise ValueError(f"config.optim.microbatches={o.microbatches} must be >= 1 and divide "
                         f"config.data.batch_size={d.batch_size}")
    if not 0.0 <= o.ema_decay < 1.0:
        raise ValueError(f"config.optim.ema_decay must be in [0, 1), got {o.ema_decay}")
    validate_train(config.train)


def validate_train(t: ml_collections.ConfigDict) -> None:
    """Checks ``config.train``; fields added after a config was written fall back to their defaults."""
    for f in ("steps", "log_every", "checkpoint_every"):
        if int(t[f]) < 1:
            raise ValueError(f"config.train.{f} must be positive, got {t[f]}")
    for f in ("keep_checkpoints", "keep_period"):
        if int(t.get(f, 0)) < 0:
            raise ValueError(f"config.train.{f} must be >= 0 (0: keep all / off), got {t[f]}")
    for f in ("resume_from", "init_from"):
        if not isinstance(t.get(f, ""), str):
            raise ValueError(f"config.train.{f} must be a path string ('' for none), got {t[f]!r}")
    if not isinstance(t.get("skip_nonfinite_steps", False), bool):
        raise ValueError(f"config.train.skip_nonfinite_steps must be a bool, got {t.skip_nonfinite_steps!r}")
    if int(t.get("preview_every", 0)) < 0:
        raise ValueError(f"config.train.preview_every must be >= 0 (0: off), got {t.preview_every}")
    if int(t.get("preview_every", 0)) > 0:
        for f in ("preview_examples", "preview_steps"):
            if int(t.get(f, 1)) < 1:
                raise ValueError(f"config.train.{f} must be positive, got {t[f]}")
        from dreamactor_jax.data.sources import PREVIEW_SOURCES
        from dreamactor_jax.diffusion.sampler import SAMPLERS

        if t.get("preview_method", "unipc") not in SAMPLERS:
            raise ValueError(f"config.train.preview_method={t.preview_method!r}; choose one of {SAMPLERS}")

        if t.get("preview_source", "validation") not in PREVIEW_SOURCES:
            raise ValueError(f"config.train.preview_source={t.preview_source!r}; choose one of {PREVIEW_SOURCES}")
    if float(t.get("peak_flops_per_device", 0.0)) < 0:
        raise ValueError(f"config.train.peak_flops_per_device must be >= 0 (0: by device kind), got "
                         f"{t.peak_flops_per_device}")
    parse_profile_steps(t.get("profile_steps", ""))  # raises naming the field


def parse_profile_steps(value: Any) -> tuple[int, int] | None:
    """``config.train.profile_steps`` -> (first, last) step numbers, inclusive, as logged (1-based); None: off.

    Accepts ``""``/None (off), ``"A:B"``, ``"A"`` (one step), or a pair ``(A, B)``.

    Raises:
      ValueError: anything else, or not ``1 <= A <= B``.
    """
    if (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, Sequence) and not isinstance(value, str) and not value)
    ):
        return None
    try:
        if isinstance(value, str):
            parts = [int(p) for p in value.strip().split(":")]
        else:
            parts = [int(p) for p in value]
        if len(parts) == 1:
            parts = parts * 2
        a, b = parts
    except (TypeError, ValueError):
        raise ValueError(
            f"config.train.profile_steps={value!r}: use 'A:B' (steps A..B, inclusive), 'A', or ''"
        ) from None
    if not 1 <= a <= b:
        raise ValueError(f"config.train.profile_steps={value!r}: need 1 <= first <= last step")
    return a, b


def stage_config(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
    """A complete train config (as ``launch/train.py`` takes) for ``stage1`` or ``stage2`` of a curriculum config."""
    s = config[stage]
    c = ml_collections.ConfigDict()
    c.seed = config.seed
    c.model = config.model
    c.objective = config.objective
    c.mesh = config.mesh
    c.data = s.data
    c.optim = s.optim
    c.train = s.train
    return ml_collections.ConfigDict(c.to_dict(preserve_field_references=True))  # typed placeholders stay overridable


def load_config(spec: str) -> ml_collections.ConfigDict:
    """``'configs/stage1_pose.py:tiny'`` -> that file's ``get_config('tiny')``, as ``--config=`` loads it (unlocked).

    A relative path is looked up from the working directory, then from the repository root (so notebooks in
    ``notebooks/`` can name ``configs/...`` as the README does).
    """
    import importlib.util
    import os

    path, _, arg = spec.partition(":")
    if not os.path.isabs(path) and not os.path.exists(path):
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {spec.partition(':')[0]!r} not found (from {os.getcwd()} or the repo)")
    module = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    mod = importlib.util.module_from_spec(module)
    module.loader.exec_module(mod)
    return mod.get_config(arg or None)


def describe(config: ml_collections.ConfigDict) -> str:
    """The resolved config as sorted ``a.b.c = value`` lines (fields left to a preset's value, None, omitted)."""

    def walk(d, prefix=""):
        for k in sorted(d):
            v = d[k]
            if isinstance(v, dict):
                yield from walk(v, f"{prefix}{k}.")
            elif v is not None:
                yield f"{prefix}{k} = {v!r}"

    return "\n".join(walk(config.to_dict()))
