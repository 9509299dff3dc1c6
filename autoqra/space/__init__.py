"""The search space: model spec, storage formats, plans, budgets and the peak-memory model."""
