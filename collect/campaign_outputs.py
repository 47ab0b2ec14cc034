"""What a finished campaign leaves in `--out DIR`: measured.csv, runs.csv, model.joblib, learning_curve.png, campaign.json.

`measured.csv` holds the measured rows in the measurement schema (re-importable with `layoutcast import csv`);
`runs.csv` the campaign's runs in selection order; `model.joblib` a model trained on every measured row (all
targets, `layoutcast train`'s artifact format); `learning_curve.png` the model's error (held out on the pool for
replay campaigns, cross-validated otherwise) and the best objective found, against runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from collect.campaign import CampaignResult
from features.schema import COLUMNS


def write_outputs(result: CampaignResult, out_dir: str | Path) -> dict[str, Path]:
    """Write every output file of a campaign into `out_dir`; returns what was written (no model without usable rows)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        from features.errors import InputError

        raise InputError(f"--out {str(out)!r} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    measured = result.measured[[c for c in COLUMNS if c in result.measured.columns]]
    measured.to_csv(out / "measured.csv", index=False)
    written["measured"] = out / "measured.csv"
    runs = result.runs.copy()
    if len(runs):
        runs["config"] = [json.dumps(c, sort_keys=True) for c in runs["config"]]
        runs["row_hashes"] = [",".join(h) for h in runs["row_hashes"]]
    runs.to_csv(out / "runs.csv", index=False)
    written["runs"] = out / "runs.csv"
    model_path = _write_model(result, out / "model.joblib")
    if model_path is not None:
        written["model"] = model_path
    written["learning_curve"] = learning_curve_figure(result, out / "learning_curve.png")
    (out / "campaign.json").write_text(json.dumps(result.summary(), indent=2, default=str) + "\n")
    written["summary"] = out / "campaign.json"
    return written


def _write_model(result: CampaignResult, path: Path) -> Path | None:
    """Train on every measured row (all targets) and save the artifact; None when no row is usable."""
    from features.errors import InputError
    from train.artifact import save_artifact
    from train.pipeline import train_model

    if not len(result.measured):
        return None
    try:
        model, meta = train_model(result.measured, seed=result.settings.seed)
    except InputError:
        return None
    meta["campaign"] = {"campaign_id": result.campaign_id, "strategy": result.settings.strategy,
                        "runs": int(len(result.runs))}
    save_artifact(model, path, meta)
    return path


def learning_curve_figure(result: CampaignResult, path: str | Path) -> Path:
    """Two panels against runs: the model's median error (held-out or cross-validated), the best objective found."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result.curve
    runs = np.array([p.runs for p in curve], dtype=float)
    target = result.objective.target
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    held = [p.heldout for p in curve]
    if any(held):
        for t in sorted({k for h in held for k in h}):
            ax1.plot(runs, [h.get(t, np.nan) * 100 for h in held], marker="o", label=f"{t} (held-out pool rows)")
    oof = np.array([np.nan if p.oof_median_ape is None else p.oof_median_ape * 100 for p in curve])
    if np.isfinite(oof).any():
        ax1.plot(runs, oof, marker="s", linestyle="--", label=f"{target} (cross-validated on measured)")
    ax1.set_xlabel("runs measured")
    ax1.set_ylabel("median absolute % error")
    ax1.set_title("model error")
    ax1.grid(alpha=0.3)
    if ax1.lines:
        ax1.legend(fontsize=8)
    if any("within_3pct" in p.best for p in curve):
        ax2.plot(runs, [p.best.get("within_3pct", np.nan) * 100 for p in curve], marker="o",
                 label="scenarios whose best measured layout is within 3% of the best")
        ax2.set_ylabel("% of scenarios")
        ax2.set_ylim(0, 100)
    else:
        ax2.plot(runs, [p.best.get("value", np.nan) for p in curve], marker="o",
                 label=f"best measured {result.objective.name}" + (" per GPU" if result.objective.per_gpu else ""))
        ax2.set_ylabel(f"{result.objective.target}" + (" per GPU" if result.objective.per_gpu else ""))
    ax2.set_xlabel("runs measured")
    ax2.set_title("best found")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(f"campaign {result.campaign_id} ({result.settings.strategy})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """A compact view of a campaign's runs for printing: order, iteration, configuration, status, cost."""
    if not len(runs):
        return pd.DataFrame(columns=["seq", "iteration", "config", "status", "cost_gpu_h"])
    from collect.campaign import config_label

    return pd.DataFrame({"seq": runs["seq"], "iteration": runs["iteration"],
                         "config": [config_label(c) for c in runs["config"]], "status": runs["status"].fillna("planned"),
                         "cost_gpu_h": runs["cost_gpu_h"]})
