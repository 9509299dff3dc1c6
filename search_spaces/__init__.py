"""The preset search spaces (one YAML file a preset), shipped in the wheel as ``autoqra.search_spaces``
and found through ``importlib.resources``; see ``autoqra/space/search_space.py``."""
