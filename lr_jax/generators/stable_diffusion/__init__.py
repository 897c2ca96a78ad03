"""Stable Diffusion 1.x / 2.x components in Flax Linen, loaded from diffusers' hub files."""
