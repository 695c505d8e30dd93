"""The one `Definitions` object of the code location (loaded by workspace.yaml and `make ui`)."""

from __future__ import annotations

from dagster import Definitions, load_assets_from_modules

from assets import corpora
from jobs.resources import EngineResource

all_assets = load_assets_from_modules([corpora])

defs = Definitions(
    assets=all_assets,
    resources={"engine": EngineResource()},
)
