"""Checkpoints: ``format`` (what a checkpoint holds, saving, loading, resuming), ``runs`` (opening a run: its
config, dataset and models), ``reference`` (importing the reference implementation's checkpoints)."""
