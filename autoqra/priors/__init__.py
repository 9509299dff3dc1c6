"""Layer-importance priors: quantization sensitivity and adaptation demand per layer group."""
