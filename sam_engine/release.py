"""The released public-data checkpoint: v0, pretrained once by the project's own command, as SAM users start
from SAM's released weights.

``make pretrain`` (:func:`build_release`) trains the configured model on the public corpus (the engine's
public training split plus ``train.pretrain_extra_images`` more images from the same seeded generator, the
engine's public validation split held out) for ``train.pretrain_steps`` steps with the engine's training
recipe, and writes two files to ``released/``:

- ``public_v0.pt``: the weights in the engine's checkpoint format, stored as float16 (a few MB);
- ``public_v0.json``: the recipe (model configuration, corpus settings, training settings), the code version
  it was built from, the sha256 of the public training split and of the extra images' annotations, the steps,
  the validation metrics, and the sha256 of ``public_v0.pt``.

``make run``'s ``model_v0`` starts from it (:func:`read_release`) when the recipe equals the one this
configuration would train, the public corpus on disk is the one it was trained on and the file's sha256 is
the recorded one; anything else is refused with a :class:`ReleaseError` naming the field, and v0 is trained
from scratch instead (as it is with ``train.use_release`` false, ``PRETRAIN=1 make run``).
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import REPO_ROOT, EngineConfig
from .data.errors import DataError
from .io import atomic_write_json

log = logging.getLogger(__name__)

RELEASE_DIR = REPO_ROOT / "released"
NAME = "public_v0"


class ReleaseError(DataError):
    """A released checkpoint that cannot be used for this configuration; names the file and field."""

    def __init__(self, file: str | Path, field: str, message: str) -> None:
        super().__init__(str(file), NAME, field, message)


@dataclass(frozen=True)
class Release:
    """A verified released checkpoint: the weights file and its description."""

    checkpoint: Path
    meta: dict[str, Any]


def release_recipe(cfg: EngineConfig) -> dict[str, Any] | None:
    """What a release for ``cfg`` must have been trained with; None for a real public corpus (no release)."""
    from .data.synthetic import GENERATOR_VERSION
    from .model import get_config
    from .training.train import recipe_from_config

    if cfg.corpus.public_coco_json:
        return None
    c, t = cfg.corpus, cfg.train
    return {
        "model": get_config(cfg.model.name).to_dict(),
        "corpus": {
            "generator_version": GENERATOR_VERSION,
            "seed": cfg.seed,
            "public_images": c.public_images,
            "public_size": list(c.public_size),
            "public_val_fraction": c.public_val_fraction,
            "extra_images": t.pretrain_extra_images,
        },
        "train": {
            "steps": t.pretrain_steps,
            "batch_size": t.batch_size,
            "lr": t.lr,
            "weight_decay": t.weight_decay,
            "warmup_steps": t.warmup_steps,
            "seed": cfg.seed,
            **recipe_from_config(t),
        },
    }


def recipe_differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two recipes differ (``a`` recorded, ``b`` wanted), with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += recipe_differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: release {a!r}, here {b!r}"]


def read_release(cfg: EngineConfig, directory: str | Path | None = None) -> Release:
    """The verified release for ``cfg`` (in ``directory``, default ``released/``); a :class:`ReleaseError`
    says why there is none that fits."""
    from .io import sha256_file as sha256

    directory = Path(directory if directory is not None else RELEASE_DIR)
    meta_path, ckpt = directory / f"{NAME}.json", directory / f"{NAME}.pt"
    wanted = release_recipe(cfg)
    if wanted is None:
        raise ReleaseError(
            meta_path, "corpus", "the public corpus is real data: no release was trained on it"
        )
    if not meta_path.is_file() or not ckpt.is_file():
        raise ReleaseError(
            meta_path, "file", f"no released checkpoint in {directory} (make pretrain builds it)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise ReleaseError(meta_path, "file", f"not readable JSON: {e}") from e
    diffs = recipe_differences(meta.get("recipe"), wanted)
    if diffs:
        raise ReleaseError(meta_path, "recipe", "trained with another recipe: " + "; ".join(diffs[:6]))
    manifest = cfg.corpora_dir / "manifest.json"
    if manifest.is_file():
        here = json.loads(manifest.read_text()).get("sha256", {}).get("public/train.json")
        if here != meta.get("public_train_sha256"):
            raise ReleaseError(
                meta_path,
                "public_train_sha256",
                f"trained on public/train.json {meta.get('public_train_sha256')}, the corpus here is {here}",
            )
    actual = sha256(ckpt)
    if actual != meta.get("sha256"):
        raise ReleaseError(
            ckpt, "sha256", f"file sha256 {actual} differs from the recorded {meta.get('sha256')}"
        )
    return Release(ckpt, meta)


def code_version() -> str:
    """``git describe``-style version of the checkout (commit, ``-dirty`` when it has changes), or unknown."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_release(model: torch.nn.Module, meta: dict[str, Any], directory: str | Path = RELEASE_DIR) -> Path:
    """Store ``model`` as float16 in the checkpoint format and its description (with the file's sha256)."""
    from .io import sha256_file as sha256
    from .model.checkpoint import save_checkpoint

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    shell = _StateHolder(half, model.config)
    ckpt = save_checkpoint(shell, directory / f"{NAME}.pt", metadata={"release": NAME})
    atomic_write_json(directory / f"{NAME}.json", {**meta, "sha256": sha256(ckpt)}, indent=2)
    return ckpt


class _StateHolder(torch.nn.Module):
    """What :func:`save_checkpoint` needs of a model: ``state_dict()`` and ``config``."""

    def __init__(self, state: dict[str, torch.Tensor], config: Any) -> None:
        super().__init__()
        self._state = state
        self.config = config

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return self._state


def pretrain_corpus(cfg: EngineConfig, work_dir: Path, log_fn: Callable[[str], None] = log.info):
    """The public training split plus ``train.pretrain_extra_images`` more images of the generator (written
    under ``work_dir``), and the public validation split; returns (train corpus, val corpus, extra sha256)."""
    from .data.coco import load_coco
    from .data.corpora import extra_public_images, generate_corpora, load_public
    from .data.corpus import MaskCorpus

    generate_corpora(cfg, log=log_fn)
    train, val = load_public(cfg, "train"), load_public(cfg, "val")
    extra_json, extra_sha = extra_public_images(cfg, cfg.train.pretrain_extra_images, work_dir / "extra")
    if extra_json is None:
        return train, val, None
    extra = load_coco(extra_json, extra_json.parent / "images")
    anns = {k: list(v) for k, v in train.annotations.items()}
    for k, v in extra.annotations.items():
        anns.setdefault(k, []).extend(v)
    merged = MaskCorpus(images=[*train.images, *extra.images], annotations=anns, source=str(extra_json))
    return merged, val, extra_sha


def build_release(
    cfg: EngineConfig,
    work_dir: str | Path,
    directory: str | Path = RELEASE_DIR,
    log_fn: Callable[[str], None] = log.info,
) -> Path:
    """``make pretrain``: train the release for ``cfg`` and write it to ``directory``."""
    from .training.train import recipe_from_config, train_model

    work = Path(work_dir)
    recipe = release_recipe(cfg)
    if recipe is None:
        raise ReleaseError(directory, "corpus", "the public corpus is real data: nothing to release")
    train, val, extra_sha = pretrain_corpus(cfg, work, log_fn)
    t = cfg.train
    log_fn(f"pretraining {cfg.model.name} for {t.pretrain_steps} steps on {len(train.images)} public images")
    result = train_model(
        train,
        cfg.model.name,
        work / "train",
        max_steps=t.pretrain_steps,
        max_minutes=None,
        batch_size=t.batch_size,
        lr=t.lr,
        seed=cfg.seed,
        val_corpus=val,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        val_max_objects=cfg.eval.public_val_objects,
        final_eval_clicks=cfg.eval.max_clicks,
        run_name="pretrain",
        **recipe_from_config(t),
    )
    from .model.checkpoint import load_model

    model = load_model(result.checkpoint)
    manifest = json.loads((cfg.corpora_dir / "manifest.json").read_text())
    meta = {
        "name": NAME,
        "recipe": recipe,
        "code_version": code_version(),
        "public_train_sha256": manifest["sha256"]["public/train.json"],
        "extra_annotations_sha256": extra_sha,
        "steps": result.steps,
        "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, int | float)},
        "command": "make pretrain",
    }
    return write_release(model, meta, directory)


def main(argv: list[str] | None = None) -> int:
    """``python -m sam_engine.release``: build the release (``make pretrain``) or verify the one in place."""
    import argparse

    from .config import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["build", "verify"])
    parser.add_argument("--profile", default=None)
    parser.add_argument("--dir", default=str(RELEASE_DIR), help="where the release lives")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .threads import configure_torch_threads

    configure_torch_threads()
    cfg = load_config(args.profile)
    if args.command == "build":
        path = build_release(cfg, cfg.data_dir / "pretrain", args.dir, log.info)
        print(f"released {path}")
        return 0
    try:
        release = read_release(cfg, args.dir)
    except ReleaseError as e:
        print(f"refused: {e}")
        return 1
    print(f"ok: {release.checkpoint} ({release.meta['steps']} steps, {release.meta['code_version']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
