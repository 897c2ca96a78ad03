"""The tiny config with overrides, for tests: tiny_config(**{"section.field": value})."""
from configs import tiny


def tiny_config(**overrides):
  c = tiny.get_config()
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c
