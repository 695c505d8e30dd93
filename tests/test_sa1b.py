"""SA-1B per-image JSON and tar shards: round trip, determinism, atomicity, validation, safe member names."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from sam_engine.data import rle as rle_utils
from sam_engine.data import sa1b
from sam_engine.data.errors import DataError, Quarantine


def _png(h: int, w: int, seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _doc(image_id: int, h: int = 24, w: int = 32, n: int = 3, ext: str = "png") -> dict:
    rng = np.random.default_rng(image_id)
    anns = []
    for j in range(n):
        m = np.zeros((h, w), dtype=bool)
        x0, y0 = int(rng.integers(0, w - 6)), int(rng.integers(0, h - 6))
        m[y0 : y0 + 5, x0 : x0 + 6] = True
        seg = rle_utils.encode(m)
        anns.append(
            sa1b.annotation(
                image_id * 100 + j,
                seg,
                [x0, y0, 5, 4],
                int(m.sum()),
                0.91,
                0.97,
                [0, 0, w, h],
                [[x0 + 2.5, y0 + 2.0]],
            )
        )
    return sa1b.image_json(image_id, w, h, f"sa_{image_id}.{ext}", anns)


def _items(ids: list[int]) -> list[sa1b.ShardItem]:
    return [sa1b.ShardItem(_doc(i), _png(24, 32, i), "png") for i in ids]


def test_round_trip_and_pycocotools_decodes(tmp_path: Path):
    items = _items([3, 1, 12])
    info = sa1b.write_shard(tmp_path / "sa_000000.tar", items)
    assert info.image_ids == [3, 1, 12] and info.mask_counts == [3, 3, 3]
    docs = sa1b.read_shard_records(info.path)
    by_id = {it.doc["image"]["image_id"]: it.doc for it in items}
    assert [d["image"]["image_id"] for d in docs] == [1, 3, 12]
    assert all(d == by_id[d["image"]["image_id"]] for d in docs)
    corpus = sa1b.read_shard(info.path, cache_dir=tmp_path / "cache")
    assert corpus.num_masks == 9 and len(corpus.quarantine) == 0
    for rec in corpus.images:
        assert rec.path.read_bytes() == _png(24, 32, rec.image_id)
        for ann in corpus.masks_for(rec.image_id):
            seg = ann["segmentation"]
            m = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode("ascii")})
            assert m.shape == (rec.height, rec.width) and int(m.sum()) == ann["area"]
            assert ann["image_id"] == rec.image_id


def test_deterministic_bytes_regardless_of_order(tmp_path: Path):
    a = sa1b.write_shard(tmp_path / "a" / "sa_000001.tar", _items([1, 2, 3, 4]))
    items = _items([1, 2, 3, 4])
    random.Random(0).shuffle(items)
    b = sa1b.write_shard(tmp_path / "b" / "sa_000001.tar", items)
    assert a.path.read_bytes() == b.path.read_bytes() and a.sha256 == b.sha256
    with tarfile.open(a.path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.mode) for m in members} == {(0, 0, 0, 0o644)}


def test_killed_write_leaves_no_partial_shard(tmp_path: Path):
    target = tmp_path / "sa_000002.tar"
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from tests.fault_hooks import pause_tar_writes; pause_tar_writes(60)\n"
        "from tests.test_sa1b import _items\n"
        "from sam_engine.data import sa1b\n"
        f"sa1b.write_shard({str(target)!r}, _items(list(range(8))))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 60
        temps: list[Path] = []
        while time.time() < deadline:
            temps = [p for p in tmp_path.glob(".sa_000002.tar.*.tmp") if p.stat().st_size > 0]
            if temps:
                break
            time.sleep(0.05)
        assert temps, "the writer never started"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not target.exists()
    assert list(tmp_path.glob("*.tar")) == []  # nothing a reader would pick up
    # the next write cleans the leftover and succeeds
    sa1b.write_shard(target, _items([0, 1]))
    assert target.exists() and list(tmp_path.glob(".*.tmp")) == []


@pytest.mark.parametrize(
    "field,value,error_field",
    [
        ("segmentation", {"size": [10, 32], "counts": "0"}, "segmentation.size"),
        ("segmentation", {"size": [24, 32], "counts": "3"}, "segmentation.counts"),
        ("bbox", [30, 0, 10, 4], "bbox"),
        ("area", 0, "area"),
        ("predicted_iou", 1.5, "predicted_iou"),
        ("stability_score", -0.1, "stability_score"),
        ("crop_box", [0, 0, 40, 24], "crop_box"),
        ("point_coords", [[1.0]], "point_coords"),
    ],
)
def test_bad_annotation_quarantined_valid_kept(tmp_path: Path, field: str, value, error_field: str):
    doc = _doc(5)
    doc["annotations"][1][field] = value
    path = tmp_path / "sa_5.json"
    path.write_text(json.dumps(doc))
    q = Quarantine()
    out = sa1b.read_image_json(path, q)
    assert [a["id"] for a in out["annotations"]] == [500, 502]
    assert len(q) == 1
    err = q.errors[0]
    assert err.field == error_field and err.record == 501 and str(path) in err.file
    with pytest.raises(DataError) as e:
        sa1b.read_image_json(path)
    assert e.value.field == error_field


def test_bad_header_and_bad_json(tmp_path: Path):
    doc = _doc(6)
    doc["image"]["width"] = "wide"
    p = tmp_path / "sa_6.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(DataError) as e:
        sa1b.read_image_json(p, Quarantine())
    assert e.value.field == "image.width"
    p.write_text("{not json")
    with pytest.raises(DataError) as e:
        sa1b.read_image_json(p)
    assert e.value.field == "json" and "sa_6.json" in e.value.file


def test_rle_string_counts_matches_pycocotools():
    m = np.zeros((7, 9), dtype=bool)
    m[0, 0] = True
    m[2:6, 3:8] = True
    seg = rle_utils.encode(m)
    counts = rle_utils.counts_runs(seg["counts"])
    assert sum(counts) == 63 and counts[0] == 0
    again = mask_utils.frPyObjects({"size": [7, 9], "counts": counts}, 7, 9)
    assert again["counts"].decode("ascii") == seg["counts"]


def _raw_tar(path: Path, members: list[tuple[str, bytes]], symlink: str | None = None) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)


@pytest.mark.parametrize("name", ["../sa_1.json", "/tmp/sa_1.json", "a/../../sa_1.json"])
def test_unsafe_member_names_refused(tmp_path: Path, name: str):
    path = tmp_path / "evil.tar"
    _raw_tar(path, [(name, b"{}")])
    q = Quarantine()
    assert sa1b.read_shard_records(path, q) == []
    assert [(e.record, e.field) for e in q.errors] == [(name, "member")]
    with pytest.raises(DataError) as e:  # without a quarantine the first problem raises
        sa1b.read_shard_records(path)
    assert e.value.field == "member"


def test_symlink_member_refused(tmp_path: Path):
    path = tmp_path / "link.tar"
    _raw_tar(path, [], symlink="sa_1.png")
    q = Quarantine()
    assert sa1b.read_shard(path, cache_dir=tmp_path / "c", quarantine=q).images == []
    assert "regular file" in q.errors[0].message and q.errors[0].field == "member"
    assert not any((tmp_path / "c").iterdir())


def test_unpaired_and_mismatched_members_quarantined(tmp_path: Path):
    good = _doc(1)
    wrong_name = _doc(2)
    wrong_name["image"]["file_name"] = "sa_2.jpg"  # but the member is a png
    members = [
        ("sa_1.json", sa1b.dumps(good)),
        ("sa_1.png", _png(24, 32, 1)),
        ("sa_2.json", sa1b.dumps(wrong_name)),
        ("sa_2.png", _png(24, 32, 2)),
        ("sa_3.json", sa1b.dumps(_doc(3))),  # no image
        ("notes.txt", b"hello"),
    ]
    path = tmp_path / "mixed.tar"
    _raw_tar(path, members)
    q = Quarantine()
    corpus = sa1b.read_shard(path, cache_dir=tmp_path / "c", quarantine=q)
    assert [im.image_id for im in corpus.images] == [1]
    assert q.fields() == {"member", "image.file_name", "image"}


def test_folder_reader(tmp_path: Path):
    for i in (1, 2):
        doc = _doc(i)
        sa1b.write_image_json(tmp_path / f"sa_{i}.json", doc)
        (tmp_path / f"sa_{i}.png").write_bytes(_png(24, 32, i))
    orphan = _doc(9)
    sa1b.write_image_json(tmp_path / "sa_9.json", orphan)  # its image is missing
    corpus = sa1b.read_folder(tmp_path)
    assert [im.image_id for im in corpus.images] == [1, 2]
    assert corpus.images[0].path == (tmp_path / "sa_1.png").resolve()
    assert corpus.num_masks == 6 and corpus.quarantine.fields() == {"image.file_name"}


def test_writer_refuses_inconsistent_items(tmp_path: Path):
    doc = _doc(4)
    with pytest.raises(DataError):
        sa1b.write_shard(tmp_path / "x.tar", [sa1b.ShardItem(doc, b"", "jpg")])  # file_name says png
    bad = _doc(4)
    bad["annotations"][0]["area"] = -1
    with pytest.raises(DataError):
        sa1b.write_shard(tmp_path / "y.tar", [sa1b.ShardItem(bad, b"", "png")])
    assert not (tmp_path / "x.tar").exists() and not (tmp_path / "y.tar").exists()


def test_read_shards_merges_and_flags_repeats(tmp_path: Path):
    a = sa1b.write_shard(tmp_path / "sa_000000.tar", _items([1, 2])).path
    b = sa1b.write_shard(tmp_path / "sa_000001.tar", _items([2, 3])).path
    corpus = sa1b.read_shards([a, b], cache_dir=tmp_path / "cache")
    assert [im.image_id for im in corpus.images] == [1, 2, 3]
    assert len(corpus.quarantine) == 1
