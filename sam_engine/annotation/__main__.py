"""Command line of the annotation tool.

Serve (loopback by default)::

    python -m sam_engine.annotation --host 127.0.0.1 --port 8765 --data-dir data --checkpoint data/models/v1.pt
    python -m sam_engine.annotation serve --data-dir data --random-init          # untrained tiny model (demo)

Create an annotator and print their token (shown once; only its hash is stored)::

    python -m sam_engine.annotation add-annotator --data-dir data --name alice --role annotator --expertise r1,r2

Assign an annotator tasks on pool images nobody has a task for (an admin's job; see ``assign.py``)::

    python -m sam_engine.annotation assign --data-dir data --annotator alice --images 20

The store is ``<data-dir>/quality.duckdb`` unless ``--db`` says otherwise. Images are served from the
``--dataset-dir`` folders (``PATH`` or ``SOURCE=PATH``, repeatable); the default is the data folder's corpus
image folders (target pool, gold set, public corpus), searched in that order for each image's ``file_name``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_IMAGE_DIRS = ("corpora/target_pool/images", "corpora/gold/images", "corpora/public/images")


def _folder(value: str) -> Path | str:
    """A local folder as a Path; an fsspec URL (``s3://bucket/pool``) stays a string."""
    from sam_engine import storage

    return Path(value) if storage.is_local(value) else value


def _dataset_dirs(values: list[str] | None, data_dir: Path) -> dict[str, Path | str] | list[Path | str]:
    if not values:
        return [data_dir / d for d in DEFAULT_IMAGE_DIRS]
    named = [v for v in values if "=" in v and "://" not in v.split("=", 1)[0]]
    if named and len(named) != len(values):
        raise SystemExit("--dataset-dir: give either all as SOURCE=PATH or all as PATH")
    if named:
        return {k: _folder(p) for k, p in (v.split("=", 1) for v in values)}
    return [_folder(v) for v in values]


def load_predictor(
    checkpoint: Path | None,
    model: str,
    random_init: bool,
    seed: int = 0,
    zoom: bool = True,
    lanes: int = 1,
    snap: bool = True,
    output_choice: bool = True,
) -> list[object]:
    """``lanes`` interactive predictors (``sam_engine.zoom``; ``zoom`` off: plain ``SamPredictor`` s) over one
    checkpoint (own format or official SAM) or, with ``random_init``, an untrained model of the named
    configuration. A checkpoint from the engine's model store answers first clicks with its version's output
    choice when its evaluation fitted one (``output_choice`` off: the IoU head's)."""
    from sam_engine.zoom import predictor_lanes

    if checkpoint is not None:
        from sam_engine.model.checkpoint import load_model

        sam = load_model(checkpoint)
    elif random_init:
        from sam_engine.model import build_sam

        logging.getLogger("sam_engine.annotation").warning(
            "serving an untrained %s model (--random-init)", model
        )
        sam = build_sam(model, seed=seed)
    else:
        raise SystemExit("give --checkpoint PATH, or --random-init to serve an untrained model")
    sam.eval()
    out = predictor_lanes(sam, lanes, zoom=zoom, snap=snap)
    from sam_engine.data.errors import DataError
    from sam_engine.output_choice import ChoicePredictor, recorded_output_choice

    try:
        choice = recorded_output_choice(checkpoint) if checkpoint is not None and output_choice else None
    except DataError as e:
        raise SystemExit(str(e)) from None
    if choice is None:
        return out

    logging.getLogger("sam_engine.annotation").info(
        "first clicks answered with the output choice fitted on %d labelled clicks", choice.objects
    )
    return [ChoicePredictor(lane, choice) for lane in out]


def default_lanes(torch_threads: int) -> int:
    """One lane per ``torch_threads`` CPU cores, at most 4 (more lanes than cores only add contention)."""
    cores = os.cpu_count() or 1
    return max(1, min(4, cores // max(1, torch_threads)))


def served_hosts(host: str, extra: Sequence[str] | None = None) -> list[str]:
    """Host names the WebSocket's ``Host`` check allows besides loopback: ``--host`` (unless it is a wildcard
    address such as ``::``, which no client names) and every ``--allow-host``."""
    import ipaddress

    def wildcard(name: str) -> bool:
        try:
            return ipaddress.ip_address(name.strip("[]")).is_unspecified
        except ValueError:
            return False

    return [h for h in (host, *(extra or ())) if h and not wildcard(h)]


def _serve(args: argparse.Namespace) -> None:
    from sam_engine import storage
    from sam_engine.quality.store import QualityStore

    from .server import create_app, run
    from .service import ImageResolver
    from .session import SegmentationService

    if args.torch_threads > 0:
        import torch

        torch.set_num_threads(args.torch_threads)
    data_dir = Path(args.data_dir)
    store = QualityStore(
        args.db or data_dir / "quality.duckdb",
        idle_release_s=args.idle_release_s,
        max_hold_s=args.max_hold_s if args.max_hold_s > 0 else None,
    )
    dirs = _dataset_dirs(args.dataset_dir, data_dir)
    cache_dir = storage.data_cache_dir(data_dir)  # local copies of images in remote dataset folders
    predictor = load_predictor(
        args.checkpoint,
        args.model,
        args.random_init,
        args.seed,
        zoom=not args.no_zoom,
        lanes=args.lanes if args.lanes > 0 else default_lanes(args.torch_threads),
        snap=not args.no_snap,
        output_choice=not args.no_output_choice,
    )
    resolver = ImageResolver(store, dirs, cache_dir=cache_dir)
    service = SegmentationService(predictor, resolver.load, cache_size=args.cache_size)
    app = create_app(
        store,
        service,
        dirs,
        image_cache_dir=cache_dir,
        rate_limit=(args.rate, args.burst),
        cors_origins=args.allow_origin or (),
        ws_hosts=served_hosts(args.host, args.allow_host),
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("sam_engine.annotation").warning(
            "listening on %s: put TLS in front of it, tokens travel in every request", args.host
        )
    try:
        run(app, args.host, args.port, log_level=args.log_level, access_log=args.access_log)
    finally:
        service.close()
        store.close()


def _add_annotator(args: argparse.Namespace) -> None:
    from sam_engine.quality.store import QualityStore

    store = QualityStore(args.db or Path(args.data_dir) / "quality.duckdb", idle_release_s=0)
    expertise = [e for e in (args.expertise or "").split(",") if e]
    annotator_id, token = store.add_annotator(
        args.name, args.role, annotator_id=args.id, expertise=expertise, exist_ok=args.rotate
    )
    store.close()
    print(f"annotator {annotator_id} ({args.role}); token (shown once):\n{token}")


def _assign(args: argparse.Namespace) -> None:
    from sam_engine.quality.store import QualityStore

    from ..workforce.assign import AssignError, assign_images, register_pool

    data_dir = Path(args.data_dir)
    store = QualityStore(args.db or data_dir / "quality.duckdb", idle_release_s=0)
    try:
        pool = _pool_records(data_dir, args.profile)
        added = register_pool(store, pool) if pool else 0
        if added:
            print(f"registered {added} pool images from {data_dir}")
        ids = assign_images(store, args.annotator, args.images, stage=args.stage)
    except AssignError as e:
        raise SystemExit(f"assign: {e}") from None
    finally:
        store.close()
    print(f"assigned {len(ids)} stage-{args.stage} tasks to {args.annotator}: {', '.join(map(str, ids))}")


def _pool_records(data_dir: Path, profile: str | None) -> list:
    """The target pool of the engine's data folder (its configuration's pool folder), or [] when it has none."""
    from sam_engine.config import load_config
    from sam_engine.data.corpora import load_pool

    cfg = load_config(profile, {"data_dir": str(data_dir)})
    try:
        return list(load_pool(cfg).images)
    except FileNotFoundError:
        return []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sam_engine.annotation", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="serve the annotation tool")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--data-dir", default="data")
    serve.add_argument(
        "--db", type=Path, default=None, help="DuckDB file (default <data-dir>/quality.duckdb)"
    )
    serve.add_argument(
        "--dataset-dir", action="append", help="image folder, PATH or SOURCE=PATH (repeatable)"
    )
    serve.add_argument("--checkpoint", type=Path, default=None)
    serve.add_argument(
        "--no-output-choice",
        action="store_true",
        help="answer first clicks with the IoU head's pick, not the version's fitted output choice",
    )
    serve.add_argument("--model", default="tiny", help="model configuration for --random-init")
    serve.add_argument("--random-init", action="store_true", help="serve an untrained model (tests, demos)")
    serve.add_argument(
        "--no-zoom", action="store_true", help="answer clicks on the whole image only (no zoom-in refinement)"
    )
    serve.add_argument(
        "--no-snap", action="store_true", help="the model's masks as they come (no region snapping)"
    )
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--cache-size", type=int, default=16, help="images whose embeddings stay cached")
    serve.add_argument("--rate", type=float, default=50.0, help="WebSocket messages per second per client")
    serve.add_argument("--burst", type=int, default=100)
    serve.add_argument("--allow-origin", action="append", help="CORS origin allowed to call the API")
    serve.add_argument(
        "--allow-host",
        action="append",
        help="host name clients use to reach the server (WebSocket Host check; loopback names and --host are "
        "always allowed; repeatable)",
    )
    serve.add_argument(
        "--idle-release-s",
        type=float,
        default=1.0,
        help="close the DuckDB file after this many idle seconds so readers get a turn",
    )
    serve.add_argument(
        "--max-hold-s",
        type=float,
        default=2.0,
        help="when another process waits for the DuckDB file, give it a turn once the server has held the file "
        "this many seconds (readers get in under constant load; 0: never)",
    )
    serve.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="intra-op threads for the model (1 keeps click latency steady on a busy CPU; 0: torch's default)",
    )
    serve.add_argument(
        "--lanes",
        type=int,
        default=0,
        help="predictors answering clicks in parallel (0: one per --torch-threads CPU cores, at most 4)",
    )
    serve.add_argument("--access-log", action="store_true")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_serve)

    add = sub.add_parser("add-annotator", help="create an annotator and print their token")
    add.add_argument("--data-dir", default="data")
    add.add_argument("--db", type=Path, default=None)
    add.add_argument("--name", required=True)
    add.add_argument("--id", default=None, help="annotator id (default: the name)")
    add.add_argument("--role", choices=("annotator", "reviewer", "admin"), default="annotator")
    add.add_argument("--expertise", default="", help="comma-separated regions")
    add.add_argument("--rotate", action="store_true", help="existing annotator: issue a new token")
    add.set_defaults(func=_add_annotator)

    assign = sub.add_parser(
        "assign", help="give an annotator tasks on pool images nobody has a task for (admin)"
    )
    assign.add_argument("--data-dir", default="data")
    assign.add_argument("--db", type=Path, default=None)
    assign.add_argument(
        "--annotator", required=True, help="annotator id (add-annotator's --id, else its name)"
    )
    assign.add_argument("--images", type=int, default=20, help="how many images (tasks) to assign")
    assign.add_argument("--stage", type=int, choices=(1, 2), default=1, help="stage the masks count for")
    assign.add_argument("--profile", default=None, help="engine profile of the data folder (pool location)")
    assign.set_defaults(func=_assign)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["serve", *argv]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.func(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
