"""The search: priors-driven warm start, multi-fidelity NSGA-II, trust-region Bayesian refinement."""
