"""DreamActor-JAX: universal character image animation (DreamActor-M2) on a Wan2.1 DiT, in JAX."""

__version__ = "0.1.0"
