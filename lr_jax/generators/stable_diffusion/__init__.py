"""Stable Diffusion inpainting in JAX: noise schedulers (and the models that use them)."""
