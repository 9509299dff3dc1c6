"""autoqra: per-layer quantization bit-width and LoRA rank search under a peak-training-memory budget."""

__version__ = "0.1.0"
