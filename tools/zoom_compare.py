"""Click-protocol figures of a checkpoint with and without zoom-in refinement, on public val and the gold set.

    python tools/zoom_compare.py CHECKPOINT [--objects 100] [--clicks 10] [--expansion 1.7 2.0] [--json OUT]

Same seeded objects (``min_area`` 16) for every row; SAM's single pass is the ``single pass`` row.
Reads the corpora of the configured profile (``SAM_ENGINE_DATA_DIR`` / ``SAM_ENGINE_PROFILE``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sam_engine.config import load_config  # noqa: E402
from sam_engine.data.corpora import load_gold, load_public  # noqa: E402
from sam_engine.evaluation.interactive import ClickProtocol, evaluate_corpus  # noqa: E402
from sam_engine.model.checkpoint import load_model  # noqa: E402
from sam_engine.predictor import EmbeddingCache, SamPredictor  # noqa: E402
from sam_engine.zoom import ZoomPredictor  # noqa: E402

KEYS = ("miou@1", "oracle_miou@1", "miou@2", "miou@3", "miou@5", "miou@10", "noc@90", "nof@90")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--objects", type=int, default=100)
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--expansion", type=float, nargs="+", default=[1.7])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config()
    model = load_model(args.checkpoint).eval()
    corpora = {"public val": load_public(cfg, "val"), "gold": load_gold(cfg)}
    report = (1, 2, 3, 5, args.clicks) if args.clicks > 5 else (1, 3, 5)
    protocol = ClickProtocol(max_clicks=args.clicks, report_clicks=report, stop_early=False)
    rows = []
    print(f"{'corpus':<11} {'predictor':<14} " + " ".join(f"{k:>13}" for k in KEYS))
    for cname, corpus in corpora.items():
        variants = [("single pass", None)] + [(f"zoom {e:g}x", e) for e in args.expansion]
        for vname, expansion in variants:
            base = SamPredictor(model, cache=EmbeddingCache(64))
            predictor = base if expansion is None else ZoomPredictor(base, expansion=expansion)
            with torch.no_grad():
                _, summary = evaluate_corpus(
                    predictor, corpus, protocol, max_objects=args.objects, seed=args.seed, min_area=16
                )
            row = {"corpus": cname, "predictor": vname, **{k: summary.get(k) for k in KEYS}}
            rows.append(row)
            cells = " ".join(
                f"{row[k]:>13.3f}" if isinstance(row[k], float) else f"{row[k]!s:>13}" for k in KEYS
            )
            print(f"{cname:<11} {vname:<14} {cells}", flush=True)
    if args.json:
        payload = {
            "checkpoint": str(args.checkpoint),
            "objects": args.objects,
            "clicks": args.clicks,
            "rows": rows,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
