"""Evaluation of region strategies: editing every (image, strategy) pair, metrics, masks, the report."""
