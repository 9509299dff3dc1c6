"""Executors run trials for the pipeline and yield results in completion order, never dropping one."""
