"""One retraining job: archive slice -> fine-tune (DDP) -> gate -> registry.

:func:`run_training` is what ``kronos-stream train`` calls on every rank. Rank 0 fetches the starting
model, evaluates, writes the candidate and publishes (or records the refusal); the others train.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch
import torch.distributed as dist

import kronos_core
from kronos_core import Kronos, KronosTokenizer
from trainer.data import Split, TrainingDataError, series_from_frame, walk_forward
from trainer.gate import build_eval_set, decide, figures, score_candidate, score_model, weights_finite
from trainer.loop import LoopConfig, LoopResult, PhaseConfig, Runtime, run_loop, setup_distributed, teardown
from trainer.settings import TrainSettings

log = structlog.get_logger("kronos.trainer")

MANIFEST_FORMAT = "kronos-stream/model/1"
PLAN_NAME = "plan.json"
FINGERPRINT_FIELDS = (
    "archive", "start", "end", "symbols", "lookback", "horizon", "val_fraction", "steps", "batch_size", "lr",
    "weight_decay", "warmup_steps", "min_lr_ratio", "grad_clip", "tokenizer_steps", "tokenizer_lr",
    "tokenizer_grad_clip", "seed", "bf16",
)


@dataclass(frozen=True)
class StartingPoint:
    """The model a run fine-tunes (and the champion it must beat)."""

    tokenizer_dir: Path
    predictor_dir: Path
    version: str | None  # registry version, or None for given folders
    manifest: dict[str, Any]

    @property
    def calendar_tz(self) -> str:
        return str(self.manifest.get("runtime", {}).get("calendar_tz") or "UTC")


def resolve_start(settings: TrainSettings, runtime: Runtime) -> StartingPoint:
    """Given folders, or the registry champion fetched (and verified) into the work folder."""
    if settings.tokenizer_dir is not None and settings.predictor_dir is not None:
        manifest_path = settings.predictor_dir.parent / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        return StartingPoint(settings.tokenizer_dir, settings.predictor_dir, None, manifest)
    from kronos_contract.registry import Registry, RegistryError

    assert settings.registry is not None
    registry = Registry(settings.registry)
    champion = registry.champion()
    if champion is None:
        raise RegistryError(
            f"the registry {settings.registry} has no champion to fine-tune; publish one first or pass "
            "--tokenizer-dir and --predictor-dir"
        )
    dest = settings.work_dir / "parent" / champion
    if runtime.is_main:
        for old in (settings.work_dir / "parent").glob("*"):  # earlier champions' copies (a reused work folder)
            if old.name != champion and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        local = registry.fetch(champion, dest)
    if runtime.world > 1:
        dist.barrier()
    if not runtime.is_main:
        local = registry.fetch(champion, dest)  # already there: verified, not downloaded again
    return StartingPoint(local.tokenizer_dir, local.predictor_dir, champion, local.manifest)


def champion_to_beat(settings: TrainSettings, start: StartingPoint) -> StartingPoint:
    """The registry's current champion if there is one (fetched), else the starting model."""
    if settings.registry is None:
        return start
    from kronos_contract.registry import Registry

    registry = Registry(settings.registry)
    champion = registry.champion()
    if champion is None or champion == start.version:
        return start
    local = registry.fetch(champion, settings.work_dir / "parent" / champion)
    return StartingPoint(local.tokenizer_dir, local.predictor_dir, champion, local.manifest)


def load_split(settings: TrainSettings, calendar_tz: str) -> Split:
    from kronos_contract.archive import read_bars

    frame = read_bars(settings.archive, start=settings.start, end=settings.end,
                      symbols=list(settings.symbols) if settings.symbols else None)
    if frame.empty:
        raise TrainingDataError(
            f"the archive {_redact_url(settings.archive)} holds no bars from {settings.start or 'the beginning'} "
            f"to {settings.end or 'now'} for symbols {list(settings.symbols) if settings.symbols else 'all'}: "
            "check the archive path, the time range and the symbols"
        )
    return walk_forward(series_from_frame(frame, calendar_tz), settings.lookback, settings.horizon,
                        settings.val_fraction)


def loop_config(settings: TrainSettings) -> LoopConfig:
    phases = []
    if settings.tokenizer_steps:
        phases.append(PhaseConfig("tokenizer", settings.tokenizer_steps, settings.tokenizer_lr, settings.weight_decay,
                                  min(settings.warmup_steps, settings.tokenizer_steps), settings.min_lr_ratio,
                                  settings.tokenizer_grad_clip))
    phases.append(PhaseConfig("predictor", settings.steps, settings.lr, settings.weight_decay, settings.warmup_steps,
                              settings.min_lr_ratio, settings.grad_clip))
    return LoopConfig(lookback=settings.lookback, batch_size=settings.batch_size, seed=settings.seed,
                      save_every=settings.save_every, log_every=settings.log_every, progress=settings.progress,
                      num_workers=settings.num_workers, bf16=settings.bf16, phases=phases)


def fingerprint(settings: TrainSettings, start: StartingPoint, split: Split, world: int) -> str:
    """What a saved state must match to be resumed: settings, starting weights, data, world size."""
    h = hashlib.sha256()
    h.update(json.dumps(settings.model_dump(mode="json", include=set(FINGERPRINT_FIELDS)), sort_keys=True).encode())
    for d in (start.tokenizer_dir, start.predictor_dir):
        h.update((d / "model.safetensors").read_bytes())
    h.update(json.dumps(split.summary, sort_keys=True, default=str).encode())
    h.update(str(world).encode())
    return h.hexdigest()[:16]


def _finite(value: Any) -> Any:
    """JSON-safe: NaN/inf become None (the registry writes strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _redact_url(url: str | None) -> str | None:
    """``scheme://user:secret@host/...`` -> ``scheme://***@host/...`` (manifests are read by many)."""
    if url is None or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def _redacted(dumped: dict[str, Any]) -> dict[str, Any]:
    return {k: _redact_url(v) if k in ("archive", "registry", "redis_url") else v for k, v in dumped.items()}


def build_manifest(settings: TrainSettings, start: StartingPoint, split: Split, result: LoopResult,
                   evaluation: dict[str, Any], verdict: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
    last = {p: next((h for h in reversed(result.history) if h["phase"] == p), None) for p in result.steps}
    return _finite({
        "format": MANIFEST_FORMAT,
        "parent": start.version,
        "parent_source": None if start.version else str(start.predictor_dir.parent),
        "runtime": {**start.manifest.get("runtime", {}),  # the parent's runtime settings carry over
                    # What the parent supports; unknown for folders without a manifest (the official
                    # checkpoints): then no bound is claimed, since the training window is not one.
                    "max_context": start.manifest.get("runtime", {}).get("max_context"),
                    "calendar_tz": settings.calendar_tz or start.calendar_tz, "train_window": settings.window},
        "data": {"archive": _redact_url(settings.archive), "start": str(settings.start) if settings.start else None,
                 "end": str(settings.end) if settings.end else None,
                 **{k: v for k, v in split.summary.items() if k != "symbols"},
                 "symbols": sorted(split.summary["symbols"]),  # type: ignore[call-overload]
                 "row_counts": split.summary["symbols"]},
        "settings": _redacted(settings.model_dump(mode="json")),
        "training": {"steps": result.steps, "resumed_from_step": result.resumed_from,
                     "wall_s": round(result.wall_s, 2), "samples_per_s": round(result.samples_per_s, 2),
                     "last_step": last, "world_size": runtime.world, "device": str(runtime.device),
                     "tokenizer_frozen": settings.tokenizer_steps == 0},
        "evaluation": evaluation,
        "gate": verdict,
        "software": {"kronos_core": kronos_core.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "world_size": runtime.world,
    })


def run_training(settings: TrainSettings) -> dict[str, Any]:
    """Train, gate and publish; returns the manifest on rank 0 and ``{}`` on other ranks.

    Training reseeds torch's global CPU generator (dropout, module initialisation before the weights
    load); the caller's generator state is restored afterwards, so a library caller's own random
    draws do not depend on whether it trained in between."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    with torch.random.fork_rng(devices=[]):
        runtime = setup_distributed(settings.device)
        try:
            return _run(settings, runtime)
        finally:
            teardown(runtime)


def pin_end(settings: TrainSettings, runtime: Runtime) -> TrainSettings:
    """Without ``end`` the data range ends "now": the first start of a run records that time in
    ``<work_dir>/plan.json`` and a restart of the same run reuses it, so bars archived meanwhile do
    not change its data (and its saved state stays resumable). A published run's plan is not reused.
    With ``last_days`` the range starts that many days before its end."""
    settings = _pin_end(settings, runtime)
    if settings.last_days is not None and settings.end is not None:
        start = settings.end - dt.timedelta(days=settings.last_days)
        settings = settings.model_copy(update={"start": start})
    return settings


def _pin_end(settings: TrainSettings, runtime: Runtime) -> TrainSettings:
    if settings.end is not None:
        return settings
    path = settings.work_dir / PLAN_NAME
    key = hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]
    if runtime.is_main:
        plan = json.loads(path.read_text()) if path.is_file() else {}
        if plan.get("settings") != key or plan.get("published"):
            plan = {"settings": key, "end": dt.datetime.now(dt.UTC).isoformat(), "published": None}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{PLAN_NAME}.tmp")
            tmp.write_text(json.dumps(plan))
            os.replace(tmp, path)
    if runtime.world > 1:
        dist.barrier()
    plan = json.loads(path.read_text())
    return settings.model_copy(update={"end": dt.datetime.fromisoformat(plan["end"])})


def _mark_published(settings: TrainSettings, version: str | None) -> None:
    path = settings.work_dir / PLAN_NAME
    if path.is_file():
        plan = json.loads(path.read_text())
        plan["published"] = version or "local"
        path.write_text(json.dumps(plan))


def _run(settings: TrainSettings, runtime: Runtime) -> dict[str, Any]:
    if settings.signing_key is not None and runtime.is_main:  # an unusable key fails now, not after training
        from kronos_contract.signing import load_private_key

        load_private_key(settings.signing_key)
    settings = pin_end(settings, runtime)
    start = resolve_start(settings, runtime)
    split = load_split(settings, settings.calendar_tz or start.calendar_tz)
    if runtime.is_main:
        log.info("train_data", **{k: v for k, v in split.summary.items() if k != "symbols"},
                 symbols=len(split.summary["symbols"]))  # type: ignore[arg-type]
    tokenizer = KronosTokenizer.from_pretrained(start.tokenizer_dir)
    model = Kronos.from_pretrained(start.predictor_dir)
    fp = fingerprint(settings, start, split, runtime.world)
    result = run_loop(tokenizer, model, split.train, loop_config(settings), runtime,
                      work_dir=settings.work_dir, fingerprint=fp)
    if not runtime.is_main:
        return {}
    tokenizer.cpu()
    model.cpu()
    es = build_eval_set(split.val, settings.eval_windows, settings.seed)
    candidate = score_candidate(tokenizer, model, es, settings.eval_samples)
    baseline = champion_to_beat(settings, start)
    champion = score_model(KronosTokenizer.from_pretrained(baseline.tokenizer_dir),
                           Kronos.from_pretrained(baseline.predictor_dir), es, settings.eval_samples)
    verdict = decide(candidate, champion, settings.gate_margin, finite_weights=weights_finite(tokenizer, model))
    evaluation = figures(candidate, champion, es, settings.eval_samples)
    evaluation["held_out"] = held_out = split.val.subset(settings.eval_windows).coverage()
    symbols = len(split.summary["symbols"])  # type: ignore[arg-type]
    if held_out["symbols"] != symbols or float(held_out["days"]) < 2.0:  # type: ignore[arg-type]
        log.warning("gate_held_out_small", held_out=held_out, symbols_trained=symbols,
                    hint="widen the time range or --val-fraction: the gate should see every symbol over "
                         "several days")  # fmt: skip
    as_challenger = settings.challenger and settings.registry is not None
    promoted = verdict.promote and settings.promote and not as_challenger and settings.registry is not None
    gate = {"promoted": promoted, "passed": verdict.promote, "reason": verdict.reason,
            "margin": settings.gate_margin, "metric": "crps", "challenger": bool(verdict.promote and as_challenger)}
    gate["champion"] = baseline.version or str(baseline.predictor_dir.parent)
    manifest = build_manifest(settings, start, split, result, evaluation, gate, runtime)
    out = settings.work_dir / "candidate"
    if out.exists():
        shutil.rmtree(out)
    tokenizer.save_pretrained(out / "tokenizer")
    model.save_pretrained(out / "predictor")
    manifest = publish(settings, out, manifest, verdict.promote)
    _mark_published(settings, manifest.get("version"))
    log.info("train_done", version=manifest.get("version"), promoted=manifest["gate"]["promoted"],
             reason=verdict.reason, candidate_crps=candidate.crps, champion_crps=champion.crps,
             persistence_mae=candidate.persistence_mae)
    return manifest


def publish(settings: TrainSettings, folder: Path, manifest: dict[str, Any], passed: bool) -> dict[str, Any]:
    """Store the candidate in the registry (promoted if the gate passed, or made a challenger with
    ``challenger``), or record the refusal.

    Without a registry the candidate stays in ``<work_dir>/candidate`` with its manifest."""
    if settings.registry is None:
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest
    from kronos_contract.registry import Registry, new_version_id, publish_hint

    registry = Registry(settings.registry)
    version = new_version_id(settings.version_prefix)
    if not passed:
        registry.record_refused(version, manifest)
        log.warning("candidate_refused", version=version, reason=manifest["gate"]["reason"],
                    champion=registry.champion())
        return {**manifest, "version": version}
    signing_key = None
    if settings.signing_key is not None:
        from kronos_contract.signing import load_private_key

        signing_key = load_private_key(settings.signing_key)
    promote = settings.promote and not settings.challenger
    stored = registry.publish(version, folder / "tokenizer", folder / "predictor", manifest,
                              promote=promote, signing_key=signing_key)
    if settings.challenger:  # the daemons score it beside the champion and decide on live bars
        from kronos_contract.challengers import challenge

        challenge(registry, version, by="trainer")
        log.info("candidate_published_as_challenger", version=version, champion=registry.champion())
    if settings.keep_versions:
        deleted = registry.gc(settings.keep_versions)
        if deleted:
            log.info("registry_gc", deleted=deleted, kept=settings.keep_versions)
    if (promote or settings.challenger) and settings.redis_url:
        try:
            asyncio.run(publish_hint(settings.redis_url, settings.key_prefix, version))
        except Exception as exc:  # the pointer is the truth; a lost hint only delays the daemons
            log.warning("hint_not_published", version=version, error=str(exc))
    return stored
