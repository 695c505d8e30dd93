"""The engine's names in MLflow's model registry: aliases ``model_v0``..``model_v3`` and ``champion``, and
descriptions.

Every engine model version (the assets ``model_v0``..``model_v3``) is a version of one registered model. Its
alias is the asset's name (``models:/sam-engine-model@model_v2``; MLflow reserves ``v<number>``: ``@v2`` is
registered version 2, whichever engine model that is), and its description says what it was trained on, its
gold-set figures once evaluated, and its no-regression gate once judged. ``champion`` points at the newest version whose
gate passed (v0 holds it until a later version passes; a failed gate leaves it where it was).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mlflow.exceptions import MlflowException

from .. import tracking
from ..model_store import ModelRef
from .workspace import Workspace

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

CHAMPION = "champion"
REGISTERED_MODEL_DESCRIPTION = (
    "The sam-engine's promptable segmentation model. Aliases model_v0..model_v3 are the engine's model versions "
    "(v0: public-data pretrain; v1: + stage-1 masks; v2: + the masks people made in stage 2; v3: + stage-3 shards); "
    f"'{CHAMPION}' is the newest version that passed its no-regression gate on the gold set."
)
TRAINING_DATA = {
    "v0": "the public corpus (COCO-like, domain A)",
    "v1": "the stage-1 masks (assisted-manual, by annotators)",
    "v2": "the masks people made in stages 1 and 2 (train.v2_people_masks_only; stage 2: semi-automatic)",
    "v3": "the stage-3 SA-1B shards (fully automatic) and the masks people made in stages 1 and 2 "
    "(train.v3_people_masks_only)",
}
GOLD_FIGURES = (
    ("gold/miou@1", "mIoU@1"),
    ("gold/miou@3", "mIoU@3"),
    ("gold/miou@5", "mIoU@5"),
    ("gold/noc@90", "NoC@90"),
    ("gold_amg/recall@0.5", "AMG recall@0.5"),
)
# each description line starts with one of these; updating one leaves the others
DATA_LINE, GOLD_LINE, GATE_LINE = "Data:", "Gold set (held out):", "Gate:"


def engine_alias(name: str) -> str:
    """The engine's short name of a model asset: ``model_v2`` -> ``v2``."""
    return name.removeprefix("model_")


def data_line(ref: ModelRef) -> str:
    """What the version was made from: its training data, parent and steps (or why its weights were reused)."""
    d = ref.data
    alias = engine_alias(ref.name)
    if d.get("released"):
        return f"{DATA_LINE} the released public-data checkpoint {d['released']} ({d.get('steps', 0)} steps)."
    if d.get("carried_from"):
        return (
            f"{DATA_LINE} {engine_alias(d['carried_from'])}'s weights carried forward without training "
            f"({d.get('reason', '')})."
        )
    source = TRAINING_DATA.get(alias, "the engine's masks")
    start = f"fine-tuned from {engine_alias(d['parent'])}" if d.get("parent") else "trained from scratch"
    sha = str(d.get("data_sha256") or "")[:12]
    return (
        f"{DATA_LINE} {start} on {source}: {d.get('images', '?')} images, {d.get('masks', '?')} masks"
        f"{f' (data sha256 {sha}…)' if sha else ''}, {d.get('steps', '?')} steps."
    )


def gold_line(metrics: Mapping[str, Any]) -> str:
    """The version's gold-set figures, or "" when the evaluation has none of them."""
    parts = [
        f"{label} {float(metrics[key]):.3f}"
        for key, label in GOLD_FIGURES
        if isinstance(metrics.get(key), int | float)
    ]
    return f"{GOLD_LINE} {', '.join(parts)}." if parts else ""


def with_line(description: str, prefix: str, line: str) -> str:
    """``description`` with its line starting ``prefix`` replaced by ``line`` (appended when absent)."""
    lines = [x for x in description.splitlines() if x.strip()]
    kept = [x for x in lines if not x.startswith(prefix)]
    order = (DATA_LINE, GOLD_LINE, GATE_LINE)
    out = [*kept, line] if line else kept
    rank = {p: i for i, p in enumerate(order)}
    return "\n".join(sorted(out, key=lambda x: next((rank[p] for p in order if x.startswith(p)), -1)))


def _update(ws: Workspace, version: str, prefix: str, line: str) -> str:
    old = tracking.version_description(ws.tracking, version)
    new = with_line(old, prefix, line)
    if new != old:
        tracking.set_version_description(ws.tracking, version, new)
    return new


def _naming(fn: F) -> F:
    """Registry names annotate versions: an MLflow store without this version (a data folder copied without
    ``mlflow.db``) is logged, not raised."""

    @functools.wraps(fn)
    def wrapper(ws: Workspace, ref: ModelRef, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(ws, ref, *args, **kwargs)
        except MlflowException as e:
            log.warning(
                "%s: registered version %s not named in MLflow: %s", ref.name, ref.registered_version, e
            )
            return None

    return wrapper  # type: ignore[return-value]


@_naming
def record_version(ws: Workspace, ref: ModelRef) -> None:
    """Give ``ref``'s registered version its alias (its name, ``model_v2``) and its data line; v0 takes ``champion``
    when no version holds it. A no-op for a version that is not registered (distributed training)."""
    if not ref.registered_version:
        return
    s = ws.tracking
    version = ref.registered_version
    client = s.client()
    if not (client.get_registered_model(s.registered_model).description or ""):
        client.update_registered_model(s.registered_model, REGISTERED_MODEL_DESCRIPTION)
    tracking.set_version_alias(s, version, ref.name)
    tracking.set_version_tag(s, version, "engine_model", ref.name)
    _update(ws, version, DATA_LINE, data_line(ref))
    if engine_alias(ref.name) == "v0" and tracking.version_by_alias(s, CHAMPION) is None:
        tracking.set_version_alias(s, version, CHAMPION)


@_naming
def record_gold(ws: Workspace, ref: ModelRef, metrics: Mapping[str, Any]) -> None:
    """Add the gold-set figures of ``ref``'s evaluation to its registered version's description."""
    if ref.registered_version:
        _update(ws, ref.registered_version, GOLD_LINE, gold_line(metrics))


@_naming
def record_gate(ws: Workspace, ref: ModelRef, passed: bool, summary: str) -> bool | None:
    """Record ``ref``'s no-regression verdict on its registered version (tag ``gate``, description line) and,
    when it passed, move ``champion`` to it unless a newer registered version holds it. Returns whether
    ``champion`` now points at ``ref`` (None when MLflow has no such version)."""
    if not ref.registered_version:
        return False
    s = ws.tracking
    version = ref.registered_version
    tracking.set_version_tag(s, version, "gate", "passed" if passed else "failed")
    _update(ws, version, GATE_LINE, f"{GATE_LINE} {'passed' if passed else 'FAILED'}, {summary}")
    current = tracking.version_by_alias(s, CHAMPION)
    if passed and (current is None or int(current) <= int(version)):
        tracking.set_version_alias(s, version, CHAMPION)
        return True
    return current == str(version)


def champion_name(ws: Workspace) -> str | None:
    """The engine model (``model_v2``) that ``champion`` points at, or None (no champion, no MLflow store)."""
    uri = ws.tracking.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        return None  # no store yet: asking would create one
    try:
        version = tracking.version_by_alias(ws.tracking, CHAMPION)
        if version is None:
            return None
        mv = ws.tracking.client().get_model_version(ws.tracking.registered_model, version)
    except MlflowException:
        return None
    return mv.tags.get("engine_model") or f"version {version}"
