"""The persistent XLA compilation cache: a restarted run loads its compiled steps instead of recompiling them.

A preempted 14B run spends minutes compiling its train step again on every restart; with
``config.train.compilation_cache_dir`` set (a local path or a ``gs://`` URL, shared by every host of a slice), JAX
stores each compiled executable there, keyed by the program, the devices and the compile options, and a restart
finds it. ``launch/train.py`` and ``launch/curriculum.py`` turn it on by default (:data:`DEFAULT_DIR`, or
``$DREAMACTOR_COMPILATION_CACHE``); ``"off"`` disables it.
"""

from __future__ import annotations

import os

import jax

DEFAULT_DIR = "~/.cache/dreamactor_jax/xla"
ENV = "DREAMACTOR_COMPILATION_CACHE"
MIN_COMPILE_SECONDS = 1.0  # programs that compile faster are not worth a cache entry


def enable(path: str) -> str | None:
    """Points JAX's persistent compilation cache at ``path`` ("" or "off": leave it off); returns the directory."""
    if not path or path == "off":
        return None
    path = path if "://" in path else os.path.abspath(os.path.expanduser(path))
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return path


def enable_for_launch(train_section) -> str | None:
    """What launch scripts do: the config's ``compilation_cache_dir`` if set ("off": none), else
    ``$DREAMACTOR_COMPILATION_CACHE``, else :data:`DEFAULT_DIR`. The config is not changed (the cache is a
    property of the machine, not of the run: a workdir moved elsewhere still resumes)."""
    return enable(train_section.get("compilation_cache_dir", "") or os.environ.get(ENV) or DEFAULT_DIR)
