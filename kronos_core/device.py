"""Device selection shared by the predictor and the engine."""

from __future__ import annotations

import torch

from kronos_core.exceptions import InputError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks cuda:0, then mps, then cpu; an explicit device must exist here."""
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda:0")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps' ({exc})") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(
                f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible"
            )
    elif resolved.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(f"device {device!r} requested but MPS is not available; use device='cpu'")
    elif resolved.type != "cpu":
        raise InputError(f"unsupported device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return resolved
