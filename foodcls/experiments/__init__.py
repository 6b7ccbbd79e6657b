"""Experiments over many runs: cross-validation, sweeps, searches, baselines, and where their jobs execute."""
