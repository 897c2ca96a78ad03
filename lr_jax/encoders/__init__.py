"""The frozen encoders (DINO, CLIP) and their weights: models, hub files, text embeddings, ImageNet names."""
