"""Procedural character dataset: articulated 2D characters, parametric motions, exact cross-identity pairs.

Pure numpy. ``characters`` defines body plans, shapes and appearance identities; ``motion`` the
parametric motions, their retargeting and forward kinematics; ``render`` the anti-aliased character
and pose renderers; ``dataset`` clips, splits, captions and ``make_example``; ``preview`` a contact sheet;
``estimator`` a simulated human 2D pose estimator (evaluation's estimated-pose setting).
"""

from dreamactor_jax.data.procedural.dataset import (
    SPLITS,
    ProceduralConfig,
    ProceduralSource,
    caption_for,
    make_example,
    sample_scene,
    split_of,
    training_fields,
)

__all__ = ["SPLITS", "ProceduralConfig", "ProceduralSource", "caption_for", "make_example", "sample_scene", "split_of",
           "training_fields"]
