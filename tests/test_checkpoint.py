"""Checkpoint I/O: own format round trip, official state dicts, strict keys, refusing pickles."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

from sam_engine.io import sha256_file as sha256
from sam_engine.model import MODEL_CONFIGS, build_sam
from sam_engine.model.checkpoint import (
    FORMAT_TAG,
    CheckpointError,
    load_model,
    load_official_checkpoint,
    match_official_config,
    read_checkpoint,
    save_checkpoint,
)

SMALL = dataclasses.replace(
    MODEL_CONFIGS["tiny"],
    img_size=64,
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_window_size=2,
    encoder_global_attn_indexes=(1,),
    out_chans=16,
    decoder_mlp_dim=16,
    decoder_num_heads=2,
    iou_head_hidden_dim=16,
    mask_in_chans=8,
)


class NotATensor:
    """Any class: a checkpoint holding one needs arbitrary unpickling."""

    def __init__(self) -> None:
        self.value = 3


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_own_format_round_trip(tmp_path):
    model = build_sam(SMALL, seed=0)
    path = save_checkpoint(model, tmp_path / "m" / "model.pt", metadata={"step": 12, "tags": ["v0"]})
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind
    ckpt = read_checkpoint(path)
    assert ckpt.config == SMALL and not ckpt.official and ckpt.metadata == {"step": 12, "tags": ["v0"]}
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT_TAG and raw["config"] == SMALL.to_dict()
    loaded = load_model(path)
    assert loaded.config == SMALL and loaded.checkpoint_metadata["step"] == 12
    assert same_weights(loaded.state_dict(), model.state_dict())
    other = build_sam(SMALL, seed=1)
    with pytest.raises(CheckpointError, match="differs from requested"):
        read_checkpoint(path, dataclasses.replace(SMALL, decoder_mlp_dim=32))
    assert not same_weights(other.state_dict(), loaded.state_dict())


def test_sha256(tmp_path):
    path = save_checkpoint(build_sam(SMALL, seed=0), tmp_path / "a.pt")
    assert sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    path2 = save_checkpoint(tmp_path / "b.pt", build_sam(SMALL, seed=1))  # (path, model) order accepted too
    assert read_checkpoint(path2).config == SMALL
    assert sha256(path) != sha256(path2)


def test_metadata_must_be_plain(tmp_path):
    with pytest.raises(CheckpointError, match="JSON-able"):
        save_checkpoint(build_sam(SMALL, seed=0), tmp_path / "x.pt", metadata={"obj": NotATensor()})


def test_pickled_objects_are_refused(tmp_path):
    model = build_sam(SMALL, seed=0)
    path = tmp_path / "evil.pt"
    payload = {
        "format": FORMAT_TAG,
        "config": SMALL.to_dict(),
        "state_dict": model.state_dict(),
        "metadata": {},
    }
    payload["metadata"] = {"x": NotATensor()}
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="refused") as err:
        load_model(path)
    assert str(path) in str(err.value) and err.value.field == "pickle"
    whole = tmp_path / "whole_model.pt"
    torch.save(model, whole)  # a pickled nn.Module, the classic unsafe checkpoint
    with pytest.raises(CheckpointError, match="refused"):
        load_official_checkpoint(whole, SMALL)


def test_strict_keys_name_file_and_keys(tmp_path):
    state = build_sam(SMALL, seed=0).state_dict()
    state.pop("mask_decoder.iou_token.weight")
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "plain.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_official_checkpoint(path, SMALL)
    msg = str(err.value)
    assert str(path) in msg and "mask_decoder.iou_token.weight" in msg and "extra.weight" in msg
    assert "missing keys (1)" in msg and "unexpected keys (1)" in msg
    state = build_sam(SMALL, seed=0).state_dict()
    state["image_encoder.pos_embed"] = torch.zeros(1, 2, 2, 32)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*image_encoder.pos_embed"):
        load_official_checkpoint(path, SMALL)


def test_official_plain_state_dict(tmp_path):
    model = build_sam("tiny", seed=2)
    path = tmp_path / "sam_tiny_plain.pth"
    torch.save(model.state_dict(), path)
    assert match_official_config(model.state_dict()) == "tiny"
    loaded = load_official_checkpoint(path)  # config inferred from keys and shapes
    assert loaded.config == MODEL_CONFIGS["tiny"]
    assert same_weights(loaded.state_dict(), model.state_dict())
    assert load_model(path, "tiny").config == MODEL_CONFIGS["tiny"]
    small = tmp_path / "small.pth"
    torch.save(build_sam(SMALL, seed=0).state_dict(), small)
    with pytest.raises(CheckpointError, match="matches none"):
        load_official_checkpoint(small)
    with pytest.raises(CheckpointError, match="own-format"):
        load_official_checkpoint(save_checkpoint(model, tmp_path / "own.pt"))


def test_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        read_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(junk)
    assert str(junk) in str(err.value)
    wrong = tmp_path / "wrong.pt"
    torch.save({"format": "other/v9", "state_dict": {}}, wrong)
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        read_checkpoint(wrong)
    lst = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], lst)
    with pytest.raises(CheckpointError, match="mapping of tensors"):
        read_checkpoint(lst, SMALL)
