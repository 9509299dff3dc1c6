"""Executors: where trials run (in this process, a pool of worker processes, or Ray tasks)."""
