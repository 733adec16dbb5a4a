"""Per-symbol state: the store interface and its Redis and in-memory drivers."""
