"""``kronos-stream train``: fine-tune on an archive slice, gate, publish.

Every field of :class:`trainer.settings.TrainSettings` is a flag (``--field-name``) and an environment
variable (``KRONOS_TRAIN__FIELD_NAME``); flags win. Run plainly, or on N processes::

    torchrun --nproc-per-node 2 -m daemon.cli train --archive /data/archive --registry /models

Exit status: 0 trained (promoted or refused: the JSON summary on stdout says which), 2 on a bad
setting, unusable data, an unusable starting model or work folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import structlog

from trainer.settings import TrainConfigError, TrainSettings, load_train_settings


def configure_logging(rank: int) -> None:
    """JSON lines on stderr (rank 0 at INFO; other ranks warnings only)."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO if rank == 0 else logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def build_parser(prog: str = "kronos-stream train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per settings field; defaults stay None so the environment and the field default apply."""
    for name, info in TrainSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = (info.description or "") + f" (env KRONOS_TRAIN__{name.upper()}, default {info.default!r})"
        if info.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text)


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    given: dict[str, Any] = {name: getattr(args, name, None) for name in TrainSettings.model_fields}
    return load_train_settings(**given)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_args(args)


def run_args(args: argparse.Namespace) -> int:
    import os

    rank = int(os.environ.get("RANK", "0"))
    configure_logging(rank)
    try:
        settings = settings_from_args(args)
    except TrainConfigError as exc:
        print(f"kronos-stream train: {exc}", file=sys.stderr)
        return 2
    from kronos_core.exceptions import CheckpointError
    from trainer.data import TrainingDataError
    from trainer.loop import ResumeError
    from trainer.run import run_training

    errors: tuple[type[Exception], ...] = (TrainingDataError, ResumeError, CheckpointError, FileNotFoundError)
    try:
        from kronos_contract.registry import RegistryError

        errors = (*errors, RegistryError)
    except ImportError:  # pragma: no cover - the contract package ships with the distribution
        pass
    try:
        manifest = run_training(settings)
    except errors as exc:
        print(f"kronos-stream train: {exc}", file=sys.stderr)
        return 2
    if rank == 0:
        gate = manifest.get("gate", {})
        evaluation = manifest.get("evaluation", {})
        print(json.dumps({
            "version": manifest.get("version"), "promoted": gate.get("promoted"), "passed": gate.get("passed"),
            "reason": gate.get("reason"), "challenger": gate.get("challenger", False),
            "champion": gate.get("champion"),
            "crps": {k: evaluation.get(k, {}).get("crps") for k in ("candidate", "champion", "persistence")},
            "training": {k: manifest.get("training", {}).get(k) for k in ("steps", "wall_s", "samples_per_s",
                                                                          "resumed_from_step", "world_size")},
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
