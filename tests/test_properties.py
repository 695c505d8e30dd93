"""Property-based tests (hypothesis): RLE round trips, the pure-Python compressed-counts decoders against
pycocotools, load_coco under random junk, the SA-1B per-image JSON reader, and the WebSocket message parser.

Settings are modest and derandomized (fixed seed, no example database) so the file is quick and repeatable.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from pycocotools import mask as mask_utils
from rle_support import counts_string

from sam_engine.annotation import protocol
from sam_engine.annotation.protocol import ProtocolError, parse_message
from sam_engine.data import rle as rle_utils
from sam_engine.data import sa1b
from sam_engine.data.coco import load_coco
from sam_engine.data.errors import DataError, Quarantine

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FAST = settings(SETTINGS, max_examples=100)


# ------------------------------------------------------------------------------------------ helpers
def runs_of(mask: np.ndarray) -> list[int]:
    """COCO run lengths of a mask (column-major, starting with a run of zeros)."""
    flat = mask.astype(np.uint8).flatten(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def expand(runs: list[int], h: int, w: int) -> np.ndarray:
    values = np.zeros(sum(runs), dtype=bool)
    pos, val = 0, False
    for r in runs:
        values[pos : pos + r] = val
        pos += r
        val = not val
    return values.reshape((h, w), order="F")


masks = hnp.arrays(np.bool_, st.tuples(st.integers(0, 24), st.integers(0, 24)))


@st.composite
def run_lists(draw) -> tuple[int, int, list[int]]:
    """(h, w, runs) with runs >= 0 summing to h*w, zero-length runs included."""
    h, w = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    cuts = sorted(draw(st.lists(st.integers(0, h * w), max_size=30)))
    bounds = [0, *cuts, h * w]
    return h, w, [b - a for a, b in zip(bounds, bounds[1:], strict=False)]


# ----------------------------------------------------------------------------------------------- RLE
@FAST
@given(masks)
def test_rle_encode_decode_round_trip(mask: np.ndarray) -> None:
    rle = rle_utils.encode(mask)
    assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
    json.dumps(rle)  # JSON-ready
    assert np.array_equal(rle_utils.decode(rle), mask)
    if mask.size:
        assert rle_utils.area(rle) == int(mask.sum())
        assert np.array_equal(rle_utils.decode({"size": list(mask.shape), "counts": runs_of(mask)}), mask)


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (37, 1), (13, 17)])
@pytest.mark.parametrize("fill", [False, True])
def test_rle_round_trip_of_empty_and_full_masks(shape: tuple[int, int], fill: bool) -> None:
    mask = np.full(shape, fill, dtype=bool)
    rle = rle_utils.encode(mask)
    assert np.array_equal(rle_utils.decode(rle), mask) and rle_utils.area(rle) == mask.sum()
    x, y, w, h = rle_utils.bbox_xywh(rle)
    assert (w, h) == ((shape[1], shape[0]) if fill else (0, 0))


@SETTINGS
@given(st.integers(1, 5).flatmap(lambda n: hnp.arrays(np.bool_, (n, 7, 9))))
def test_rle_batch_round_trip(arr: np.ndarray) -> None:
    rles = rle_utils.encode_batch(arr)
    assert rles == [rle_utils.encode(m) for m in arr]
    assert np.array_equal(rle_utils.decode_batch(rles), arr)


@FAST
@given(masks.filter(lambda m: m.size > 0))
def test_python_decoders_match_the_runs_pycocotools_encoded(mask: np.ndarray) -> None:
    counts = rle_utils.encode(mask)["counts"]
    expected = runs_of(mask)
    assert rle_utils.counts_runs(counts) == expected
    assert counts_string(expected) == counts  # our test encoder writes pycocotools' exact bytes


@FAST
@given(run_lists())
def test_pycocotools_decodes_any_valid_run_list_like_our_decoder(case: tuple[int, int, list[int]]) -> None:
    h, w, runs = case
    s = counts_string(runs)
    assert rle_utils.counts_runs(s) == runs
    ours = expand(rle_utils.counts_runs(s), h, w)
    theirs = mask_utils.decode({"size": [h, w], "counts": s.encode("ascii")}).astype(bool)
    assert np.array_equal(ours, theirs)


@FAST
@given(st.text(alphabet=[chr(c) for c in range(48, 112)], max_size=40))
def test_the_counts_reader_returns_runs_pycocotools_can_hold_or_refuses_by_field(s: str) -> None:
    try:
        runs = rle_utils.counts_runs(s)
    except rle_utils.RleError as e:
        assert e.field == "segmentation.counts" and e.message
        return
    assert all(0 <= r <= rle_utils.MAX_RLE_PIXELS for r in runs)


# ------------------------------------------------------------------------------------------ load_coco
json_scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**12) | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS_IMAGE = ("id", "file_name", "width", "height")
FIELDS_ANN = ("id", "image_id", "segmentation", "bbox", "iscrowd")
H, W = 20, 30


@pytest.fixture(scope="module")
def coco_base(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("coco_prop")
    images, anns = [], []
    for i in (1, 2, 3):
        Image.fromarray(np.full((H, W, 3), 50 * i, dtype=np.uint8)).save(root / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": W, "height": H})
        m = np.zeros((H, W), dtype=bool)
        m[2 + i : 9 + i, 3 : 12 + i] = True
        seg = rle_utils.encode(m)
        anns.append(
            {
                "id": 10 + i,
                "image_id": i,
                "category_id": 1,
                "segmentation": seg,
                "bbox": rle_utils.bbox_xywh(seg),
                "area": int(m.sum()),
                "iscrowd": 0,
            }
        )
    return root, {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}


@st.composite
def junk_records(draw, valid: list[dict], fields: tuple[str, ...], reserved: set[int]) -> object:
    """Arbitrary JSON, or a valid record under a fresh id with one field replaced or removed.

    A junk record never carries a valid record's id (that would make the valid one a duplicate, which the
    reader rightly quarantines as the second occurrence)."""
    kind = draw(st.sampled_from(["any", "mutate", "drop"]))
    if kind == "any":
        rec = draw(json_values)
    else:
        rec = dict(draw(st.sampled_from(valid)), id=draw(st.integers(1000, 10**6)))
        field = draw(st.sampled_from(fields))
        if kind == "drop":
            rec.pop(field)
        else:
            rec[field] = draw(json_values)
    if isinstance(rec, dict) and type(rec.get("id")) is int and rec["id"] in reserved:
        rec["id"] = -1
    return rec


def _write(root: Path, doc: object) -> Path:
    fd, name = tempfile.mkstemp(dir=root, suffix=".json")
    with open(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc))
    return Path(name)


@settings(
    SETTINGS,
    max_examples=50,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@pytest.mark.slow
@given(data=st.data())
def test_load_coco_keeps_every_valid_record_amid_random_junk(coco_base, data) -> None:
    root, base = coco_base
    reserved = {1, 2, 3, 11, 12, 13}
    images = list(base["images"])
    anns = list(base["annotations"])
    for _ in range(data.draw(st.integers(0, 4), label="n_junk_images")):
        images.insert(
            data.draw(st.integers(0, len(images))),
            data.draw(junk_records(base["images"], FIELDS_IMAGE, reserved)),
        )
    for _ in range(data.draw(st.integers(0, 6), label="n_junk_anns")):
        anns.insert(
            data.draw(st.integers(0, len(anns))),
            data.draw(junk_records(base["annotations"], FIELDS_ANN, reserved)),
        )
    path = _write(root, {"images": images, "annotations": anns})
    try:
        corpus = load_coco(path, root)
    finally:
        path.unlink()
    kept_images = {im.image_id for im in corpus.images}
    kept_anns = {a["id"]: a for v in corpus.annotations.values() for a in v}
    assert {1, 2, 3} <= kept_images and {11, 12, 13} <= set(kept_anns)
    for a in base["annotations"]:
        assert kept_anns[a["id"]]["segmentation"] == a["segmentation"]
    # Nothing vanishes silently: every record is either kept or quarantined, once.
    q_images = sum(1 for e in corpus.quarantine.errors if str(e.record).startswith("image"))
    q_anns = sum(1 for e in corpus.quarantine.errors if str(e.record).startswith("annotation"))
    assert len(corpus.images) + q_images == len(images)
    assert len(kept_anns) + q_anns == len(anns)
    assert all(isinstance(e, DataError) and e.field for e in corpus.quarantine.errors)


@settings(SETTINGS, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=json_values | st.fixed_dictionaries({"images": json_values, "annotations": json_values}))
def test_load_coco_raises_only_data_error_on_arbitrary_documents(coco_base, doc) -> None:
    root, _ = coco_base
    path = _write(root, doc)
    try:
        load_coco(path, root)
    except DataError as exc:
        assert exc.file and exc.field
    finally:
        path.unlink()


@settings(SETTINGS, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=st.binary(max_size=200))
def test_load_coco_raises_only_data_error_on_arbitrary_bytes(coco_base, raw: bytes) -> None:
    root, _ = coco_base
    fd, name = tempfile.mkstemp(dir=root, suffix=".json")
    with open(fd, "wb") as f:
        f.write(raw)
    try:
        load_coco(name, root)
    except DataError:
        pass
    finally:
        Path(name).unlink()


# ---------------------------------------------------------------------------------- SA-1B JSON reader
unit = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def sa1b_docs(draw) -> dict:
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    image_id = draw(st.integers(0, 2**40))
    anns = []
    for k in range(draw(st.integers(0, 4))):
        m = draw(hnp.arrays(np.bool_, (h, w)).filter(lambda a: a.any()))
        rle = rle_utils.encode(m)
        cx0, cy0 = draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))
        crop = [cx0, cy0, draw(st.integers(0, w - cx0)), draw(st.integers(0, h - cy0))]
        pts = draw(
            st.lists(
                st.tuples(st.floats(0, w, allow_nan=False), st.floats(0, h, allow_nan=False)), max_size=3
            )
        )
        anns.append(
            sa1b.annotation(
                image_id * 10 + k,
                rle,
                rle_utils.bbox_xywh(rle),
                int(m.sum()),
                draw(unit),
                draw(unit),
                crop,
                [list(p) for p in pts],
            )
        )
    name = f"sa_{image_id}.{draw(st.sampled_from(['jpg', 'png']))}"
    return sa1b.image_json(image_id, w, h, name, anns)


@FAST
@given(doc=sa1b_docs())
def test_sa1b_json_round_trip(doc: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sa.json"
        sa1b.write_image_json(path, doc)
        q = Quarantine()
        back = sa1b.read_image_json(path, q)
        assert back == doc and len(q) == 0
        assert sa1b.dumps(back) == path.read_bytes()
        for ann in back["annotations"]:
            m = rle_utils.decode(ann["segmentation"])
            assert m.shape == (doc["image"]["height"], doc["image"]["width"]) and m.sum() == ann["area"]


def _paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: dict, path: tuple, action: str, value: object) -> object:
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if action == "delete":
        if isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
    else:
        parent[path[-1]] = value
    return doc


@SETTINGS
@given(doc=sa1b_docs(), data=st.data())
def test_sa1b_reader_raises_only_data_error_on_mutated_documents(doc: dict, data) -> None:
    original = json.loads(json.dumps(doc))
    path = data.draw(st.sampled_from(_paths(doc)), label="path")
    action = data.draw(st.sampled_from(["set", "delete"]), label="action")
    value = data.draw(json_values, label="value")
    mutated = _mutate(doc, path, action if path else "set", value)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "sa.json"
        p.write_text(json.dumps(mutated))  # may contain NaN / Infinity literals
        q = Quarantine()
        try:
            out = sa1b.read_image_json(p, q)
        except DataError as exc:
            assert exc.field
            return
    touched = path[1] if len(path) >= 2 and path[0] == "annotations" else None
    if touched is None:
        return  # a header or whole-list change promises nothing about the annotations
    # Every annotation is either kept or quarantined, and every one the mutation did not touch is kept as is
    # (unless the mutation gave the touched one an id of a later one, which then is the duplicate).
    assert len(out["annotations"]) + len(q) == len(mutated["annotations"])
    ids = {a["id"] for a in original["annotations"]}
    if path[-1] == "id" and type(value) is int and value in ids:
        return
    for i, ann in enumerate(original["annotations"]):
        if i != touched:
            assert ann in out["annotations"]


@SETTINGS
@given(raw=st.binary(max_size=300))
def test_sa1b_reader_raises_only_data_error_on_arbitrary_bytes(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "sa.json"
        p.write_bytes(raw)
        try:
            sa1b.read_image_json(p, Quarantine())
        except DataError:
            pass


# --------------------------------------------------------------------------------- WebSocket parser
MODELS = {
    "auth": protocol.AuthMsg,
    "open": protocol.OpenMsg,
    "point": protocol.PointMsg,
    "box": protocol.BoxMsg,
    "undo": protocol.UndoMsg,
    "reset": protocol.ResetMsg,
    "choose": protocol.ChooseMsg,
    "accept": protocol.AcceptMsg,
    "skip": protocol.SkipMsg,
    "done": protocol.DoneMsg,
    "comment": protocol.CommentMsg,
    "review": protocol.ReviewMsg,
    "ping": protocol.PingMsg,
}
field_names = st.sampled_from(
    [
        "seq",
        "x",
        "y",
        "x0",
        "y0",
        "x1",
        "y1",
        "token",
        "task_id",
        "image_id",
        "index",
        "request_id",
        "manual_fix",
        "positive",
        "reason",
        "text",
        "mask_id",
        "verdict",
        "format",
        "comment",
    ]
) | st.text(max_size=6)
messages = st.dictionaries(field_names, json_values, max_size=6).flatmap(
    lambda d: st.sampled_from([*MODELS, "nope", ""]).map(lambda t: {"type": t, **d})
)


def _check_parsed(msg: object, kind: str | None) -> None:
    assert isinstance(msg, tuple(MODELS.values()))
    if kind is not None:
        assert isinstance(msg, MODELS[kind])
    for name in ("x", "y", "x0", "y0", "x1", "y1"):
        if hasattr(msg, name):
            assert math.isfinite(getattr(msg, name))


@FAST
@given(frame=st.text(max_size=200))
def test_parser_on_arbitrary_text(frame: str) -> None:
    try:
        msg = parse_message(frame)
    except ProtocolError as exc:
        assert exc.code in ("bad_json", "bad_message", "unknown_type", "too_large") and exc.message
        return
    _check_parsed(msg, None)


@FAST
@given(frame=st.binary(max_size=200))
def test_parser_on_arbitrary_bytes(frame: bytes) -> None:
    try:
        msg = parse_message(frame)
    except ProtocolError:
        return
    _check_parsed(msg, None)


@FAST
@given(obj=messages | json_values)
def test_parser_on_arbitrary_json(obj: object) -> None:
    frame = json.dumps(obj)
    try:
        msg = parse_message(frame)
    except ProtocolError as exc:
        assert exc.code in ("bad_json", "bad_message", "unknown_type", "too_large") and exc.message
        return
    assert isinstance(obj, dict)
    _check_parsed(msg, obj["type"])
    assert msg.type == obj["type"]


finite = st.floats(-1e6, 1e6, allow_nan=False)


@FAST
@given(
    msg=st.one_of(
        st.builds(
            lambda x, y, p, s: {"type": "point", "x": x, "y": y, "positive": p, "seq": s},
            finite,
            finite,
            st.booleans(),
            st.integers(0, 2**31),
        ),
        st.builds(
            lambda a, b, c, d: {"type": "box", "x0": a, "y0": b, "x1": c, "y1": d},
            finite,
            finite,
            finite,
            finite,
        ),
        st.builds(
            lambda r, m: {"type": "accept", "request_id": r, "manual_fix": m},
            st.from_regex(r"\A[A-Za-z0-9_.:\-]{1,100}\Z"),
            st.booleans(),
        ),
        st.builds(lambda i: {"type": "choose", "index": i}, st.integers(0, 2)),
        st.builds(lambda t: {"type": "comment", "text": t}, st.text(min_size=1, max_size=200)),
    )
)
def test_parser_accepts_every_valid_message_unchanged(msg: dict) -> None:
    parsed = parse_message(json.dumps(msg))
    assert isinstance(parsed, MODELS[msg["type"]])
    dumped = parsed.model_dump()
    assert {k: dumped[k] for k in msg} == msg


def test_parser_refuses_frames_over_the_size_limit() -> None:
    frame = json.dumps({"type": "comment", "text": "x" * 100})
    with pytest.raises(ProtocolError) as err:
        parse_message(frame, max_bytes=50)
    assert err.value.code == "too_large"
