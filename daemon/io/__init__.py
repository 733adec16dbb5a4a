"""Kafka I/O: the bus interface and its drivers, message schemas, feeds, retry."""
