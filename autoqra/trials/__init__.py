"""Trials: building a quantized-LoRA model from a plan (and, later, training and evaluating it)."""
