"""Shared fixtures: a smoke-profile config in a temp data folder, and its generated corpora."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COCO_TINY = SHARED_DATA / "coco_tiny"


@pytest.fixture(scope="session")
def smoke_cfg(tmp_path_factory):
    from sam_engine.config import load_config

    return load_config("smoke", {"data_dir": str(tmp_path_factory.mktemp("smoke_data"))})


@pytest.fixture(scope="session")
def smoke_corpora(smoke_cfg):
    """The smoke corpora, generated once per test session."""
    from sam_engine.data.corpora import generate_corpora

    return generate_corpora(smoke_cfg, workers=1)


@pytest.fixture
def coco_tiny() -> Path:
    if not COCO_TINY.is_dir():
        pytest.skip("../shared/data/coco_tiny is not beside this checkout")
    return COCO_TINY
