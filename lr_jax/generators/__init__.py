"""Generators in Flax that are not packages of their own (MaskGIT is `maskgit/`)."""
