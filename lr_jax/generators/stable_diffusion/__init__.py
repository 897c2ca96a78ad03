"""Stable Diffusion (SD-1.x / SD-2.x, plain and inpainting) components in Flax."""
