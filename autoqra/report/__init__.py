"""What a run leaves behind: the chosen plan, the Pareto front, a summary, and their printed form."""
