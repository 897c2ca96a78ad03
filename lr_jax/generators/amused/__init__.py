"""aMUSEd (open MUSE-style masked image generator) in Flax: VQ model, transformer, decoding."""
