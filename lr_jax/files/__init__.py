"""Files and pictures: manifests, config files, metrics files, PIE-Bench's mapping file, sheets."""
