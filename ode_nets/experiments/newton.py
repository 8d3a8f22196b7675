"""Per-level summary of multilevel runs (`scripts/multilevel.py train`): accuracy, optimizer steps, Newton–PCG
Gauss–Newton products and CG iterations, wall time (docs/stable_architectures.md)."""

from __future__ import annotations

import json
from pathlib import Path

from ode_nets.plotting.figures import read_metrics


def level_summary(folder: Path) -> list[dict]:
    """One row per level of a multilevel run folder (from `levels.json` and each level's `metrics.jsonl`; the
    products are counted from the logged steps, so train with `train.log_every=1` for exact totals)."""
    rows = []
    for level in json.loads((Path(folder) / "levels.json").read_text()):
        records = read_metrics(Path(level["folder"]))
        train = [r for r in records if r["kind"] == "train"]
        last = [r for r in records if r["kind"] == "eval"][-1]
        rows.append({"layers": level["layers"], "steps": last["step"], "train_acc": last["train_acc"],
                     "validation_acc": last.get("validation_acc"), "test_acc": level["test_acc"],
                     "hvps": sum(r.get("newton_hvps", 0.0) for r in train),
                     "cg_iterations": sum(r.get("newton_cg_iterations", 0.0) for r in train),
                     "wall_s": level["train_wall_time_s"]})
    return rows
