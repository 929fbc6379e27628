"""Algorithms (config group `algorithm/`): the math of one task, no I/O, no looping over tasks."""
