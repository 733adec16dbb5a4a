"""Checkpoint I/O in the published layout: ``config.json`` + ``model.safetensors``.

Only safetensors is read or written; nothing is ever unpickled. Loading is strict: a
missing, unexpected or mis-shaped tensor is an error that names it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from kronos_core.exceptions import CheckpointError, CheckpointNotFoundError, ConfigError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class _Config(Protocol):
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self: ...

    def to_dict(self) -> dict[str, Any]: ...


ConfigT = TypeVar("ConfigT", bound=_Config)


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory."""
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointNotFoundError(
            f"checkpoint directory {str(path)!r} does not exist; pass a local directory holding "
            f"{CONFIG_NAME} and {WEIGHTS_NAME} (download a published model first, e.g. with "
            "`huggingface-cli download NeoQuasar/Kronos-small --local-dir <dir>`)"
        )
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointNotFoundError(f"{str(config_path)!r} not found: a checkpoint directory needs {CONFIG_NAME}")
    try:
        data = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{str(config_path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{str(config_path)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def read_weights(directory: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of ``model.safetensors`` in a checkpoint directory, on CPU."""
    weights_path = Path(directory) / WEIGHTS_NAME
    if not weights_path.is_file():
        raise CheckpointNotFoundError(
            f"{str(weights_path)!r} not found: a checkpoint directory needs {WEIGHTS_NAME} "
            "(pickled .bin/.pt checkpoints are not supported)"
        )
    try:
        return load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {str(weights_path)!r} as safetensors: {exc}") from exc


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming every missing, unexpected or mis-shaped tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{key}: {source} has {list(state[key].shape)}, model expects {list(expected[key].shape)}"
        for key in set(expected) & set(state)
        if state[key].shape != expected[key].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if wrong_shape:
        problems.append(f"mis-shaped tensors [{'; '.join(wrong_shape)}]")
    if problems:
        raise CheckpointError(
            f"{source} does not match {type(model).__name__} built from its config: " + "; ".join(problems)
        )


def load_state_dict_strict(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Check keys and shapes (clear error), then copy every tensor into ``model``."""
    check_state_dict(model, state, source)
    model.load_state_dict(dict(state), strict=True)


def save_checkpoint(model: nn.Module, config: _Config, directory: str | os.PathLike[str]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
    os.chmod(path / WEIGHTS_NAME, 0o644)  # safetensors writes 0600; serving processes may run as another user
    return path


class PretrainedMixin(Generic[ConfigT]):
    """``from_pretrained`` / ``save_pretrained`` for a module built from one config object."""

    config_class: ClassVar[type[Any]]
    config: ConfigT

    @classmethod
    def from_config(cls, config: ConfigT) -> Self:
        return cls(config)  # type: ignore[call-arg]

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
    ) -> Self:
        """Load a local checkpoint directory (``config.json`` + ``model.safetensors``), strictly."""
        raw = read_config(directory)
        try:
            config = cls.config_class.from_dict(raw)
        except (ConfigError, TypeError) as exc:
            raise CheckpointError(f"{str(Path(directory) / CONFIG_NAME)!r}: {exc}") from exc
        model = cls.from_config(config)
        assert isinstance(model, nn.Module)
        load_state_dict_strict(model, read_weights(directory), source=str(Path(directory) / WEIGHTS_NAME))
        model.to(map_location)
        model.eval()
        return model

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write the published layout into ``directory``; returns its path."""
        assert isinstance(self, nn.Module)
        return save_checkpoint(self, self.config, directory)
