"""The region method: anchors, proposals, ROI-align, the RGN, losses, scoring, the jitted steps and their typed settings."""
