"""Our automatic mask generator against the official segment-anything ``SamAutomaticMaskGenerator``.

The official package needs torchvision, so it runs in a separate reference environment: ``make refenv`` makes
``.refenv`` (or point ``SAM_ENGINE_REF_PYTHON`` at another interpreter that has ``segment_anything``). Without
one, the rows say so and nothing is measured. With one, ``tools/bench_official_amg.py`` runs both generators
on the same images and weights (the official generator in the reference interpreter, ours in this one) with
its deterministic colour-segment stand-in for a trained SAM (meaningful, overlapping masks without trained
weights), at the official default thresholds, without and (full run) with one crop layer. Rows: our images/s
against the official generator's (the ratio is the speed-up) and the share of masks matched at IoU > 0.95
(the smaller of the two directions). Other weights, images and thresholds: run the tool itself (README).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "bench_official_amg.py"


def reference_python() -> Path | None:
    """The reference interpreter: ``SAM_ENGINE_REF_PYTHON``, else ``.refenv/bin/python``, if it exists."""
    env = os.environ.get("SAM_ENGINE_REF_PYTHON")
    path = Path(env) if env else ROOT / ".refenv" / "bin" / "python"
    return path if path.exists() else None


def _compare(python: Path, args: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_official_amg_") as tmp:
        out = Path(tmp) / "report.json"
        proc = subprocess.run(
            [str(python), str(TOOL), *args, "--json", str(out)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{TOOL.name} {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
            )
        return json.loads(out.read_text())


def run(quick: bool = False) -> list[dict]:
    python = reference_python()
    if python is None:
        return [
            {
                "benchmark": "official_amg",
                "metric": "skipped",
                "value": 0,
                "unit": "",
                "note": "no reference environment (make refenv, or set SAM_ENGINE_REF_PYTHON)",
            }
        ]
    cases = {"fake default": ["--model", "fake", "--images", "1" if quick else "4"]}
    if quick:
        cases["fake default"] += ["--points-per-side", "8"]
    else:
        cases["fake crop_n_layers=1"] = ["--model", "fake", "--images", "4", "--crop-n-layers", "1"]
    rows = []
    for label, args in cases.items():
        rep = _compare(python, args)
        note = f"{rep['images']} images, {rep['threads']} torch threads, {rep['weights']}"
        rows.append(
            {
                "benchmark": "official_amg",
                "metric": f"images_per_s[{label}]",
                "value": rep["ours_images_per_s"],
                "unit": "images/s",
                "baseline": rep["official_images_per_s"],
                "ratio": rep["speed_ratio"],
                "note": note + f"; CPU-time ratio {rep['cpu_time_ratio']:.3g}",
            }
        )
        shares = [rep["official_matched_by_ours@0.95"], rep["ours_matched_by_official@0.95"]]
        if None not in shares:  # undefined when neither generator kept a mask
            rows.append(
                {
                    "benchmark": "official_amg",
                    "metric": f"masks_matched_iou>0.95[{label}]",
                    "value": min(shares),
                    "unit": "share",
                    "note": f"{rep['official_masks']} official masks, {rep['ours_masks']} ours",
                }
            )
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(json.dumps(r))
