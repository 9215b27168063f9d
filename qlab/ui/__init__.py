"""Notebook-facing pieces: figure display, widgets, per-notebook `run(params)` functions, the runner."""
