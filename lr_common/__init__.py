"""Pieces shared by `lr_jax` and `maskgit` (which never imports `lr_jax`): the user-error
base class, random parameters for model trees, image files and pixel resizing, output
checks, seeds of any size, folder locks and JSON files read with their shape checked."""
