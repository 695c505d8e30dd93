"""Hostile input: decompression bombs, deeply nested and huge JSON, RLE runs past the image, NaN / inf / huge
prompt coordinates, unicode, absolute and '..' file names, pickled checkpoints, and duplicate concurrent
submissions. Each case must end in a clear error (DataError, PromptError, ProtocolError, an HTTP 4xx) or a
quarantined record — never a crash, a leaked file or a second copy of a mask."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from annotation_fixtures import FakePredictor, World, auth_header, build_app
from fastapi.testclient import TestClient
from PIL import Image, ImageFile
from rle_support import counts_string

from sam_engine.annotation.protocol import ProtocolError, parse_message
from sam_engine.annotation.session import PromptError, SegmentationService
from sam_engine.data import rle as rle_utils
from sam_engine.data import sa1b
from sam_engine.data.coco import load_coco
from sam_engine.data.errors import DataError, Quarantine
from sam_engine.data.folder import load_image_folder
from sam_engine.data.images import image_size, load_image

DEEP = 100_000  # nesting depth of the "deeply nested" documents
HUGE_INT = "9" * 100_000  # an integer literal far past Python's int-parsing digit limit


# ------------------------------------------------------------------------------------------ helpers
def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png_declaring(width: int, height: int, rows: int = 1) -> bytes:
    """A grayscale PNG whose header declares ``width`` x ``height`` but whose data is ``rows`` zero rows."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    body = b"".join(comp.compress(row) for _ in range(rows)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def _save(path: Path, h: int = 20, w: int = 30, value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, dtype=np.uint8)).save(path)
    return path


def _mask_ann(ann_id: int, image_id: int, h: int = 20, w: int = 30) -> dict:
    m = np.zeros((h, w), dtype=bool)
    m[3:9, 4:12] = True
    seg = rle_utils.encode(m)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "segmentation": seg,
        "bbox": rle_utils.bbox_xywh(seg),
        "area": int(m.sum()),
        "iscrowd": 0,
    }


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path, dict]:
    """A valid two-image COCO dataset: (annotation path, images folder, document)."""
    images_dir = tmp_path / "images"
    for i in (1, 2):
        _save(images_dir / f"{i}.png", value=40 * i)
    doc = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 30, "height": 20} for i in (1, 2)],
        "annotations": [_mask_ann(10 + i, i) for i in (1, 2)],
        "categories": [{"id": 1, "name": "object"}],
    }
    return tmp_path / "ann.json", images_dir, doc


def _load(dataset, mutate=None, raw: str | None = None):
    path, images_dir, doc = dataset
    doc = json.loads(json.dumps(doc))
    if mutate is not None:
        mutate(doc)
    path.write_text(raw if raw is not None else json.dumps(doc), encoding="utf-8")
    return load_coco(path, images_dir)


def _kept(corpus) -> tuple[set[int], set[int]]:
    return {im.image_id for im in corpus.images}, {a["id"] for v in corpus.annotations.values() for a in v}


# --------------------------------------------------------------------------------- decompression bombs
def test_png_with_a_huge_declared_size_is_refused_by_load_image_before_decoding(
    tmp_path: Path, monkeypatch
) -> None:
    over_ours = tmp_path / "bomb.png"
    over_ours.write_bytes(_png_declaring(10_000, 9_000))  # 90 MP declared: over our 64 MP default
    over_pil = tmp_path / "giga.png"
    over_pil.write_bytes(_png_declaring(100_000, 100_000))  # 10 GP: PIL's own bomb check fires in open()
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or None)
    with pytest.raises(DataError) as err:
        load_image(over_ours)
    assert err.value.field == "size" and "bomb.png" in err.value.file and "limit" in err.value.message
    with pytest.raises(DataError) as err:
        load_image(over_pil)
    assert (
        err.value.field == "size"
        and "giga.png" in err.value.file
        and "10000000000 pixels" in err.value.message
    )
    assert decoded == []  # the pixel data was never touched


def test_image_size_and_load_coco_refuse_a_bomb_before_decoding(dataset, monkeypatch) -> None:
    path, images_dir, _ = dataset
    (images_dir / "bomb.png").write_bytes(_png_declaring(10_000, 9_000))
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self)
    )
    with pytest.raises(DataError) as err:
        image_size(images_dir / "bomb.png")
    assert err.value.field == "size"

    def add_bomb(doc: dict) -> None:
        doc["images"].append({"id": 3, "file_name": "bomb.png", "width": 10_000, "height": 9_000})

    corpus = _load(dataset, add_bomb)
    assert [(e.record, e.field) for e in corpus.quarantine.errors] == [("image 3", "size")]
    assert (10_000, 9_000) not in decoded


def test_real_zero_bomb_is_refused_by_the_pixel_limit(tmp_path: Path) -> None:
    bomb = tmp_path / "zeros.png"
    bomb.write_bytes(_png_declaring(10_000, 10_000, rows=10_000))  # 100 MP of zeros in ~100 kB
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(DataError) as err:
        load_image(bomb)  # default limit: 64 MP
    assert err.value.field == "size"
    with pytest.raises(DataError):
        load_image(bomb, max_pixels=1_000_000)


def test_bombs_are_quarantined_by_coco_and_folder_ingestion(dataset) -> None:
    path, images_dir, _ = dataset
    (images_dir / "bomb.png").write_bytes(_png_declaring(10_000, 9_000))

    def add_bomb(doc: dict) -> None:
        doc["images"].append({"id": 3, "file_name": "bomb.png", "width": 10_000, "height": 9_000})
        doc["annotations"].append({"id": 99, "image_id": 3, "segmentation": [[0, 0, 5, 0, 5, 5]]})

    corpus = _load(dataset, add_bomb)
    assert _kept(corpus) == ({1, 2}, {11, 12})
    assert {(e.record, e.field) for e in corpus.quarantine.errors} == {
        ("image 3", "size"),
        ("annotation 99", "image_id"),
    }
    folder = load_image_folder(images_dir)
    assert sorted(im.file_name for im in folder.images) == ["1.png", "2.png"]
    assert [e.field for e in folder.quarantine.errors] == ["size"]


# ------------------------------------------------------------------------------- nested and huge JSON
def test_deeply_nested_json_is_a_data_error_for_load_coco(dataset) -> None:
    for raw in ("[" * DEEP + "]" * DEEP, '{"images": ' + "[" * DEEP + "]" * DEEP + ', "annotations": []}'):
        with pytest.raises(DataError) as err:
            _load(dataset, raw=raw)
        assert err.value.field == "json" and "ann.json" in err.value.file


def test_huge_integer_literal_is_a_data_error_for_load_coco(dataset) -> None:
    raw = (
        '{"images": [{"id": '
        + HUGE_INT
        + ', "file_name": "1.png", "width": 30, "height": 20}], "annotations": []}'
    )
    with pytest.raises(DataError) as err:
        _load(dataset, raw=raw)
    assert err.value.field == "json"


def test_many_junk_records_are_all_quarantined_and_valid_ones_kept(dataset) -> None:
    def flood(doc: dict) -> None:
        doc["annotations"] += [
            {} if k % 3 == 0 else [k] if k % 3 == 1 else {"id": "x"} for k in range(30_000)
        ]
        doc["images"] += [{"id": 1000 + k, "file_name": "z" * 5000} for k in range(200)]

    corpus = _load(dataset, flood)
    assert _kept(corpus) == ({1, 2}, {11, 12})
    assert len(corpus.quarantine) == 30_200


def test_non_finite_and_huge_numbers_in_coco_are_quarantined(dataset) -> None:
    def poison(doc: dict) -> None:
        doc["images"].append({"id": 3, "file_name": "1.png", "width": 10**30, "height": 20})
        bad = [_mask_ann(20 + k, 1) for k in range(4)]
        bad[0]["bbox"] = [0, 0, float("inf"), 5]
        bad[1]["bbox"] = [float("nan"), 0, 5, 5]
        bad[2]["bbox"] = [0, 0, 1e308, 1e308]
        bad[3]["segmentation"] = [[0, 0, 1e308, 0, float("inf"), 5]]
        doc["annotations"] += bad

    corpus = _load(dataset, poison)  # json.dumps writes Infinity / NaN literals, which json.loads accepts
    assert _kept(corpus) == ({1, 2}, {11, 12})
    fields = {e.record: e.field for e in corpus.quarantine.errors}
    assert fields == {
        "image 3": "width/height",
        "annotation 20": "bbox",
        "annotation 21": "bbox",
        "annotation 22": "bbox",
        "annotation 23": "segmentation[0]",
    }


@pytest.mark.parametrize("iscrowd", [[None], ":", float("nan"), float("inf"), {"a": 1}], ids=str)
def test_junk_iscrowd_is_quarantined(dataset, iscrowd) -> None:
    def add(doc: dict) -> None:
        doc["annotations"].append(dict(_mask_ann(40, 1), iscrowd=iscrowd))

    corpus = _load(dataset, add)
    assert _kept(corpus) == ({1, 2}, {11, 12})
    assert [(e.record, e.field) for e in corpus.quarantine.errors] == [("annotation 40", "iscrowd")]


def test_polygon_far_outside_the_image_is_refused_before_rasterising(dataset, monkeypatch) -> None:
    rasterised = []
    real = rle_utils.polygons_to_rle

    def spy(polygons, height, width):  # noqa: ANN001, ANN202 - never rasterises the far-away polygon
        rasterised.append(polygons)
        if max(abs(v) for poly in polygons for v in poly) > 1e4:
            return rle_utils.encode(np.zeros((height, width), dtype=bool))  # stand-in: an empty mask
        return real(polygons, height, width)

    monkeypatch.setattr(rle_utils, "polygons_to_rle", spy)

    def add(doc: dict) -> None:
        doc["annotations"].append({"id": 41, "image_id": 1, "segmentation": [[0, 0, 1e8, 0, 1e8, 5]]})
        doc["annotations"].append({"id": 42, "image_id": 1, "segmentation": [[1, 1, 20, 1, 20, 15]]})

    corpus = _load(dataset, add)
    assert _kept(corpus) == ({1, 2}, {11, 12, 42})
    assert [(e.record, e.field) for e in corpus.quarantine.errors] == [("annotation 41", "segmentation[0]")]
    assert all(max(abs(v) for poly in p for v in poly) <= 1e4 for p in rasterised)


def _sa1b_doc(image_id: int = 1, h: int = 20, w: int = 30) -> dict:
    m = np.zeros((h, w), dtype=bool)
    m[2:8, 3:10] = True
    ann = sa1b.annotation(
        7, rle_utils.encode(m), [3, 2, 7, 6], int(m.sum()), 0.9, 0.95, [0, 0, w, h], [[5.0, 4.0]]
    )
    return sa1b.image_json(image_id, w, h, f"sa_{image_id}.png", [ann])


@pytest.mark.parametrize("raw", ["[" * DEEP + "]" * DEEP, '{"image": {"image_id": ' + HUGE_INT + "}}"])
def test_nested_or_huge_json_is_a_data_error_for_sa1b_json(tmp_path: Path, raw: str) -> None:
    path = tmp_path / "sa_1.json"
    path.write_text(raw)
    with pytest.raises(DataError) as err:
        sa1b.read_image_json(path)
    assert err.value.field == "json"


def _tar(path: Path, members: list[tuple[str, bytes]], kinds: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if kinds and name in kinds:
                info.type = kinds[name]
                info.linkname = "/etc/passwd"
                info.size = 0
                tar.addfile(info)
            else:
                tar.addfile(info, io.BytesIO(data))
    return path


def _png_bytes(h: int = 20, w: int = 30) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_nested_json_member_of_a_shard_is_quarantined(tmp_path: Path) -> None:
    good = _sa1b_doc(1)
    shard = _tar(
        tmp_path / "s.tar",
        [
            ("sa_1.json", sa1b.dumps(good)),
            ("sa_1.png", _png_bytes()),
            ("sa_2.json", ("[" * DEEP + "]" * DEEP).encode()),
            ("sa_2.png", _png_bytes()),
        ],
    )
    q = Quarantine()
    docs = sa1b.read_shard_records(shard, q)
    assert [d["image"]["image_id"] for d in docs] == [1]
    assert [e.field for e in q.errors] == ["json"]


# ---------------------------------------------------------------------------- RLE past the image
def test_rle_runs_past_the_image_are_quarantined_by_load_coco(dataset) -> None:
    h, w = 20, 30
    over = np.zeros((h + 3, w), dtype=bool)
    over[h:, :] = True  # the foreground lies beyond the last row
    compressed_over = rle_utils.encode(over)["counts"]
    cases = {
        30: {"size": [h, w], "counts": compressed_over},  # compressed, runs cover more than h*w
        31: {"size": [h, w], "counts": [0, h * w + 5]},  # uncompressed, past the end
        32: {"size": [h, w], "counts": [h * w - 10, 10**12]},  # one giant run: must not allocate it
        33: {"size": [h, w], "counts": counts_string([h * w - 10, 2**40])},  # the same, compressed
        34: {"size": [h, w], "counts": [10, -5, h * w - 5]},  # negative run
        35: {"size": [h, w], "counts": "\x7f\x80 not rle"},  # characters outside COCO's alphabet
    }

    def add(doc: dict) -> None:
        for ann_id, seg in cases.items():
            doc["annotations"].append({"id": ann_id, "image_id": 1, "segmentation": seg, "iscrowd": 1})

    corpus = _load(dataset, add)
    assert _kept(corpus) == ({1, 2}, {11, 12})
    assert {e.record: e.field for e in corpus.quarantine.errors} == {
        f"annotation {k}": "segmentation.counts" for k in cases
    }


def test_rle_runs_past_the_image_are_quarantined_by_the_sa1b_reader(tmp_path: Path) -> None:
    doc = _sa1b_doc(1)
    bad = json.loads(json.dumps(doc["annotations"][0]))
    bad["id"] = 8
    bad["segmentation"]["counts"] = counts_string([20 * 30 - 4, 2**40])
    doc["annotations"].append(bad)
    path = tmp_path / "sa_1.json"
    path.write_bytes(sa1b.dumps(doc))
    q = Quarantine()
    out = sa1b.read_image_json(path, q)
    assert [a["id"] for a in out["annotations"]] == [7]
    assert [(e.record, e.field) for e in q.errors] == [(8, "segmentation.counts")]


def test_rle_runs_past_the_image_are_refused_by_the_store_and_the_review_endpoint(world: World) -> None:
    h, w = 96, 128
    bad = {"size": [h, w], "counts": counts_string([h * w - 4, 2**40])}
    with pytest.raises(DataError) as err:
        world.store.commit_mask(
            task_id=None,
            image_id=1,
            annotator_id=None,
            stage=1,
            source="model",
            rle=bad,
            predicted_iou=0.5,
            clicks=0,
            seconds=0.0,
        )
    assert err.value.field == "segmentation"
    good = np.zeros((h, w), dtype=bool)
    good[10:20, 10:20] = True
    mid = world.store.commit_mask(
        task_id=None,
        image_id=1,
        annotator_id="alice",
        stage=1,
        source="human",
        rle=rle_utils.encode(good),
        predicted_iou=0.5,
        clicks=1,
        seconds=1.0,
    )
    app, service = build_app(world.store, world.images_dir)
    with TestClient(app) as client:
        for fixed in (bad, {"size": [h, w], "counts": [0, h * w + 1]}):
            r = client.post(
                f"/api/review/{mid}",
                headers=auth_header(world, "rita"),
                json={"verdict": "fix", "fixed_rle": fixed},
            )
            assert r.status_code == 400, r.text
    service.close()
    assert list(world.store.masks(status=None)["mask_id"]) == [mid]


# ----------------------------------------------------------------------------- NaN / inf prompts
class CountingPredictor(FakePredictor):
    """The fake predictor, remembering every prompt it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[tuple] = []

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True):
        self.prompts.append(
            (None if point_coords is None else np.array(point_coords), None if box is None else np.array(box))
        )
        return super().predict(point_coords, point_labels, box, mask_input, multimask_output)


BAD_NUMBERS = [
    float("nan"),
    float("inf"),
    float("-inf"),
    1e300,
    -1e300,
    np.float32("nan"),
    "nan",
    "1e999",
    None,
    "x",
]


def test_non_finite_and_huge_prompt_coordinates_never_reach_the_model() -> None:
    img = np.zeros((40, 50, 3), dtype=np.uint8)
    img[10:30, 10:30] = 200
    predictor = CountingPredictor()
    service = SegmentationService(predictor, lambda image_id: img)
    session = service.open_session(1)
    for bad in BAD_NUMBERS:
        with pytest.raises(PromptError):
            session.add_point(bad, 5.0, True)
        with pytest.raises(PromptError):
            session.add_point(5.0, bad, False)
        with pytest.raises(PromptError):
            session.set_box(0, 0, bad, 10)
    assert predictor.prompts == [] and session.clicks == 0 and session.points == [] and session.box is None
    session.add_point(15.5, 15.5, True)  # still usable afterwards
    ((coords, _),) = predictor.prompts
    assert np.isfinite(coords).all()
    service.close()


def test_non_finite_and_huge_coordinates_over_the_websocket(world: World) -> None:
    predictor = CountingPredictor()
    app, service = build_app(world.store, world.images_dir, predictor=predictor, rate_limit=(1000.0, 1000))
    frames = {
        '{"type": "point", "x": NaN, "y": 3}': "bad_message",
        '{"type": "point", "x": 1e999, "y": 3}': "bad_message",  # parses to inf
        '{"type": "point", "x": -Infinity, "y": 3}': "bad_message",
        '{"type": "box", "x0": 0, "y0": 0, "x1": NaN, "y1": 5}': "bad_message",
        '{"type": "point", "x": 1e300, "y": 3}': "bad_prompt",
        '{"type": "box", "x0": -1e300, "y0": 0, "x1": 5, "y1": 5}': "bad_prompt",
        '{"type": "point", "x": "12", "y": [3]}': "bad_message",
    }
    with TestClient(app) as client, client.websocket_connect(f"/ws?token={world.tokens['alice']}") as ws:
        ws.receive_json()
        ws.send_text(json.dumps({"type": "open", "task_id": world.tasks["alice"][0]}))
        assert ws.receive_json()["type"] == "opened"
        for frame, code in frames.items():
            ws.send_text(frame)
            reply = ws.receive_json()
            assert reply["type"] == "error" and reply["code"] == code, (frame, reply)
        assert predictor.prompts == []
        ws.send_text(json.dumps({"type": "ping"}))
        assert ws.receive_json()["type"] == "pong"
    service.close()


@pytest.fixture(scope="module")
def tiny_predictor():
    from sam_engine.model import build_sam
    from sam_engine.predictor import SamPredictor

    model = build_sam("tiny", seed=0).eval()
    predictor = SamPredictor(model)
    predictor.set_image(np.zeros((32, 48, 3), dtype=np.uint8))
    return model, predictor


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), -float("inf"), 1e39], ids=["nan", "inf", "-inf", "1e39"]
)
def test_predictor_refuses_non_finite_prompts(tiny_predictor, bad: float, monkeypatch) -> None:
    model, predictor = tiny_predictor
    seen = []
    real_decode = model.decode
    monkeypatch.setattr(model, "decode", lambda *a, **k: seen.append(k) or real_decode(*a, **k))
    for coords, box in (
        (np.array([[bad, 3.0]]), None),
        (np.array([[3.0, bad]]), None),
        (None, np.array([0.0, 0.0, bad, 5.0])),
    ):
        labels = None if coords is None else np.array([1])
        with pytest.raises(ValueError):
            predictor.predict(point_coords=coords, point_labels=labels, box=box)
    assert seen == []
    masks, scores, _ = predictor.predict(point_coords=np.array([[3.0, 3.0]]), point_labels=np.array([1]))
    assert masks.shape == (3, 32, 48) and len(seen) == 1


# ------------------------------------------------------------------------------------ file names
UNICODE_NAMES = ["ça_日本.png", "100% #1 ça_日本 (copy).png", "emoji_🙂.png"]


def test_unicode_file_names_work_everywhere(tmp_path: Path, world: World) -> None:
    images_dir = tmp_path / "uni"
    for k, name in enumerate(UNICODE_NAMES):
        _save(images_dir / name, value=60 + k)
    assert load_image(images_dir / UNICODE_NAMES[0]).shape == (20, 30, 3)
    doc = {
        "images": [
            {"id": k + 1, "file_name": n, "width": 30, "height": 20} for k, n in enumerate(UNICODE_NAMES)
        ],
        "annotations": [_mask_ann(10 + k, k + 1) for k in range(len(UNICODE_NAMES))],
    }
    path = tmp_path / "uni.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    corpus = load_coco(path, images_dir)
    assert len(corpus.quarantine) == 0 and [im.file_name for im in corpus.images] == UNICODE_NAMES
    folder = load_image_folder(images_dir)
    assert (
        sorted(im.file_name for im in folder.images) == sorted(UNICODE_NAMES) and len(folder.quarantine) == 0
    )
    # The annotation server serves a unicode-named image by id.
    _save(world.images_dir / UNICODE_NAMES[1], value=77)
    world.store.add_images(
        [{"image_id": 50, "file_name": UNICODE_NAMES[1], "width": 30, "height": 20, "source": "pool"}]
    )
    app, service = build_app(world.store, world.images_dir)
    with TestClient(app) as client:
        r = client.get("/api/images/50", headers=auth_header(world, "adam"))
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (30, 20)
    service.close()


def test_absolute_dotdot_and_symlinked_names_in_coco_are_refused(dataset, tmp_path: Path) -> None:
    path, images_dir, _ = dataset
    outside = _save(tmp_path / "outside.png")  # a real, valid image just outside the dataset folder
    (images_dir / "sub").mkdir()
    (images_dir / "link.png").symlink_to(outside)
    names = {
        3: "../outside.png",
        4: str(outside),
        5: "sub/../../outside.png",
        6: "link.png",
        7: "a\x00b.png",
        8: "",
        9: "sub/..",
    }

    def add(doc: dict) -> None:
        for image_id, name in names.items():
            doc["images"].append({"id": image_id, "file_name": name, "width": 30, "height": 20})

    corpus = _load(dataset, add)
    assert _kept(corpus) == ({1, 2}, {11, 12})
    fields = {e.record: e.field for e in corpus.quarantine.errors}
    assert set(fields) == {f"image {k}" for k in names}
    assert fields.pop("image 9") in (
        "file_name",
        "image",
    )  # the folder itself: safe_join allows it, PIL refuses
    assert set(fields.values()) == {"file_name"}


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("../sa_1.json", None),
        ("/tmp/sa_1.json", None),
        ("x/../../sa_1.json", None),
        ("sa_1.png", tarfile.SYMTYPE),
        ("sa_1.png", tarfile.LNKTYPE),
        ("..\\sa_1.json", None),
    ],
)
def test_unsafe_tar_members_are_refused_and_nothing_escapes(tmp_path: Path, name: str, kind) -> None:
    members = [("sa_1.json", sa1b.dumps(_sa1b_doc(1)))]
    if kind is None:
        members += [("sa_1.png", _png_bytes()), (name, b"{}")]
    else:
        members += [(name, b"")]
    shard = _tar(tmp_path / "evil.tar", members, {name: kind} if kind else None)
    cache = tmp_path / "deep" / "cache"
    q = Quarantine()
    corpus = sa1b.read_shard(shard, cache_dir=cache, quarantine=q)  # the bad member is set aside, not fatal
    assert (name, "member") in [(e.record, e.field) for e in q.errors]
    assert all(str(shard) in e.file for e in q.errors)
    kept = [im.image_id for im in corpus.images]
    assert kept == ([1] if kind is None else [])  # sa_1 keeps its pair unless the bad member was its image
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {"evil.tar"} | ({"deep/cache/sa_1.png"} if kind is None else set())


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/sa_1.png", "..", ""])
def test_unsafe_file_name_in_sa1b_json_is_refused(tmp_path: Path, name: str) -> None:
    doc = _sa1b_doc(1)
    doc["image"]["file_name"] = name
    path = tmp_path / "sa_1.json"
    path.write_bytes(sa1b.dumps(doc))
    with pytest.raises(DataError) as err:
        sa1b.read_image_json(path, Quarantine())
    assert err.value.field == "image.file_name"


def test_image_endpoint_refuses_paths_outside_the_dataset_folder(world: World, tmp_path: Path) -> None:
    secret = _save(tmp_path / "secret.png", value=255)
    (world.images_dir / "sneaky.png").symlink_to(secret)
    rows = [
        {"image_id": 201, "file_name": "../secret.png"},
        {"image_id": 202, "file_name": str(secret)},
        {"image_id": 203, "file_name": "sneaky.png"},
        {"image_id": 204, "file_name": "./sub/../../secret.png"},
    ]
    world.store.add_images([r | {"width": 30, "height": 20, "source": "pool"} for r in rows])
    secret_bytes = secret.read_bytes()
    app, service = build_app(world.store, world.images_dir)
    with TestClient(app) as client:
        for r in rows:
            resp = client.get(f"/api/images/{r['image_id']}", headers=auth_header(world, "adam"))
            assert resp.status_code == 403, (r, resp.text)
            assert resp.content != secret_bytes
        for url in (
            "/api/images/..%2F..%2Fsecret.png",
            "/static/..%2F..%2Fserver.py",
            "/static/../server.py",
            "/static/%2e%2e/server.py",
        ):
            resp = client.get(url, headers=auth_header(world, "adam"))
            assert resp.status_code in (404, 422), (url, resp.status_code)
            assert b"create_app" not in resp.content
    service.close()


# ------------------------------------------------------------------------------ protocol frames
FRAMES = [
    pytest.param("[" * 30_000 + "]" * 30_000, id="nested"),
    pytest.param('{"type": "ping", "seq": ' + "9" * 5000 + "}", id="huge_int"),
]


@pytest.mark.parametrize("frame", FRAMES)
def test_nested_or_huge_frames_are_protocol_errors(frame: str) -> None:
    with pytest.raises(ProtocolError):
        parse_message(frame)


@pytest.mark.parametrize("frame", FRAMES)
def test_hostile_frame_over_the_websocket_gets_an_error_and_the_connection_survives(
    world: World, frame: str
) -> None:
    app, service = build_app(world.store, world.images_dir)
    try:
        with TestClient(app) as client, client.websocket_connect(f"/ws?token={world.tokens['alice']}") as ws:
            ws.receive_json()
            ws.send_text(frame)
            assert ws.receive_json()["type"] == "error"
            ws.send_text(json.dumps({"type": "ping"}))
            assert ws.receive_json()["type"] == "pong"
    finally:
        service.close()


# ------------------------------------------------------------------------------- pickled checkpoints
class _Payload:
    """Unpickling this writes a marker file: proof that arbitrary code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_pickled_object_in_a_checkpoint_is_refused_and_never_runs(tmp_path: Path) -> None:
    import torch

    from sam_engine.model import checkpoint

    marker = tmp_path / "pwned.txt"
    nested = tmp_path / "nested.pt"  # looks like our format, with the payload in the config
    torch.save(
        {"format": checkpoint.FORMAT_TAG, "config": _Payload(marker), "state_dict": {}, "metadata": {}},
        nested,
    )
    top = tmp_path / "top.pt"  # the whole file is the payload
    torch.save(_Payload(marker), top)
    in_state = tmp_path / "state.pt"  # an official-looking state dict with one poisoned entry
    torch.save({"image_encoder.pos_embed": torch.zeros(1), "evil": _Payload(marker)}, in_state)
    assert not marker.exists()
    for load in (checkpoint.read_checkpoint, checkpoint.load_model, checkpoint.load_official_checkpoint):
        for path in (nested, top, in_state):
            with pytest.raises(checkpoint.CheckpointError) as err:
                load(path)
            assert err.value.field == "pickle" and path.name in err.value.file
            assert not marker.exists(), f"{load.__name__} unpickled an arbitrary object from {path.name}"
    # What the same file does to a careless loader: the proof that the payload is live.
    torch.load(top, weights_only=False)
    assert marker.read_text() == "pwned"


# ----------------------------------------------------------------------- duplicate submissions
def test_concurrent_duplicate_commits_make_exactly_one_mask(world: World) -> None:
    m = np.zeros((96, 128), dtype=bool)
    m[5:25, 5:25] = True
    rle = rle_utils.encode(m)
    n = 12
    barrier = threading.Barrier(n)
    results: list[int] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            barrier.wait()
            results.append(
                world.store.commit_mask(
                    task_id=world.tasks["alice"][0],
                    image_id=1,
                    annotator_id="alice",
                    stage=1,
                    source="human",
                    rle=rle,
                    predicted_iou=0.9,
                    clicks=1,
                    seconds=1.0,
                    request_id="same-request",
                )
            )
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and len(results) == n and len(set(results)) == 1
    assert world.store.query("SELECT count(*) AS n FROM masks WHERE request_id = 'same-request'")["n"][0] == 1
    assert len(world.store.events("commit")) == 1


def test_concurrent_duplicate_accepts_over_two_websockets_make_exactly_one_mask(world: World) -> None:
    app, service = build_app(world.store, world.images_dir, rate_limit=(1000.0, 1000))
    task_id = world.tasks["alice"][0]
    ys, xs = np.nonzero(world.objects[1]["disc"])
    x, y = float(xs[len(xs) // 2]) + 0.5, float(ys[len(ys) // 2]) + 0.5
    replies: dict[int, dict] = {}
    barrier = threading.Barrier(2)

    with TestClient(app) as client:
        sockets = [client.websocket_connect(f"/ws?token={world.tokens['alice']}") for _ in range(2)]
        conns = [s.__enter__() for s in sockets]
        try:
            for ws in conns:
                ws.receive_json()
                ws.send_text(json.dumps({"type": "open", "task_id": task_id}))
                assert ws.receive_json()["type"] == "opened"
                ws.send_text(json.dumps({"type": "point", "x": x, "y": y}))
                assert ws.receive_json()["type"] == "masks"

            def accept(k: int) -> None:
                barrier.wait()
                conns[k].send_text(json.dumps({"type": "accept", "request_id": "dup-1", "seq": k}))
                replies[k] = conns[k].receive_json()

            threads = [threading.Thread(target=accept, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
        finally:
            for s in sockets:
                s.__exit__(None, None, None)
    service.close()
    assert [replies[k]["type"] for k in (0, 1)] == ["accepted", "accepted"], replies
    assert replies[0]["mask_id"] == replies[1]["mask_id"]
    masks = world.store.query("SELECT mask_id FROM masks WHERE request_id = 'alice:dup-1'")
    assert list(masks["mask_id"]) == [replies[0]["mask_id"]]
