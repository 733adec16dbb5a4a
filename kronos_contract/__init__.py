"""The small contract shared by the daemon and the trainer: the model registry and the bar archive.

Neither ``daemon`` nor ``trainer`` imports the other; both import this package (and ``kronos_core``).
It depends on fsspec, pyarrow, pandas, redis and cryptography (manifest signatures) only, never on torch.
"""
