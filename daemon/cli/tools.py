"""``kronos-stream redis-acl``, ``bench`` and ``train`` (the trainer's own command line)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from daemon.settings import load_settings


def add_acl_parser(sub: Any) -> None:
    acl = sub.add_parser(
        "redis-acl", help="print the ACL SETUSER line of the daemon's least-privilege Redis user"
    )
    acl.add_argument("--user", default="kronos-daemon", help="ACL user name (default kronos-daemon)")
    acl.add_argument("--prefix", help="key prefix (default: KRONOS_REDIS__KEY_PREFIX)")
    acl.add_argument("--cluster", action="store_true", help="add what a Redis Cluster client needs")
    acl.add_argument(
        "--publisher", action="store_true", help="the hint publisher's (trainer, models promote) instead"
    )


def add_bench_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="benchmarks (see 'kronos-stream bench inference --help')")
    bench.add_argument("which", choices=["inference"], help="inference: fast engine vs recompute baseline")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of that benchmark")


def add_train_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = sub.add_parser(
        "train", add_help=False,
        help="fine-tune on archived bars, gate against the champion, publish (plain or under torchrun)",
    )
    train.add_argument("train_args", nargs=argparse.REMAINDER, help="see 'kronos-stream train --help'")


def train(train_args: Sequence[str]) -> int:
    from trainer.cli import main as train_main  # lazily: the daemon never imports the trainer

    return train_main(list(train_args))


def redis_acl(args: argparse.Namespace) -> int:
    from daemon.state.redis_access import setuser_line

    prefix = args.prefix or load_settings().redis.key_prefix
    print(setuser_line(args.user, prefix, cluster=args.cluster, publisher=args.publisher))
    return 0


def bench(args: argparse.Namespace) -> int:
    from kronos_core.bench import main as bench_main

    return bench_main(args.bench_args)
