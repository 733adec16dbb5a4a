"""What the command groups share: the settings, with the command line's overrides."""

from __future__ import annotations

import argparse

from daemon.settings import Settings, load_settings


def cli_settings(args: argparse.Namespace) -> Settings:
    settings = load_settings()
    kafka = settings.kafka
    if getattr(args, "bootstrap", None):
        kafka = kafka.model_copy(update={"bootstrap_servers": args.bootstrap})
    redis = settings.redis
    if getattr(args, "redis_url", None):
        redis = redis.model_copy(update={"url": args.redis_url})
    if getattr(args, "prefix", None):
        redis = redis.model_copy(update={"key_prefix": args.prefix})
    return settings.model_copy(update={"kafka": kafka, "redis": redis})
