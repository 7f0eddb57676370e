"""Weight conversion between our checkpoints and diffusers / original Wan2.1 safetensors.

Submodules are imported explicitly (``from dreamactor_jax.convert import export``) so that
reading a safetensors file does not pull in the model, and the model does not pull in torch.
"""
