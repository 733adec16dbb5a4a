"""The scores report of one model version, for people (``kronos-stream scores``) and JSON (the API)."""

from __future__ import annotations

from typing import Any

from kronos_core.scoring import ScoreAccumulator


def report_dict(acc: ScoreAccumulator) -> dict[str, Any]:
    """A report rounded for people and JSON."""

    def r(x: Any) -> Any:
        if isinstance(x, float):
            return round(x, 6)
        if isinstance(x, list):
            return [r(v) for v in x]
        if isinstance(x, dict):
            return {k: r(v) for k, v in x.items()}
        return x

    return {k: r(v) for k, v in acc.report().to_dict().items()}


def format_report(version: str, acc: ScoreAccumulator, hours: int) -> str:
    """The scores of one version as a few lines for people (``kronos-stream scores``)."""
    rep = acc.report()

    def f(x: float | None, pct: bool = False) -> str:
        if x is None:
            return "n/a"
        return f"{x:+.1%}" if pct else f"{x:.5g}"

    lines = [
        f"model {version}: {rep.count} forecasts scored in the last {hours} h, horizon {rep.horizon}",
        f"  close MAE {f(rep.mae)}  persistence {f(rep.persistence_mae)}  skill {f(rep.skill_mae, True)}",
        f"  CRPS {f(rep.crps)}  skill {f(rep.skill_crps, True)}  "
        f"band coverage {f(rep.coverage)} (nominal {rep.nominal_coverage:.2f})",
        "  pinball " + "  ".join(f"{k} {f(v)}" for k, v in rep.pinball.items()),
        "  step   MAE        persistence  CRPS       coverage",
    ]
    for k in range(rep.horizon):
        lines.append(
            f"  {k + 1:<6} {f(rep.mae_per_step[k]):<10} {f(rep.persistence_mae_per_step[k]):<12} "
            f"{f(rep.crps_per_step[k]):<10} {f(rep.coverage_per_step[k])}"
        )
    return "\n".join(lines)
