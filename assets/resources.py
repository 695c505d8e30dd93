"""Dagster resources: the engine config (profiles + overrides) chosen per environment."""

from __future__ import annotations

import json

from dagster import ConfigurableResource
from pydantic import Field

from sam_engine.config import EngineConfig, load_config


class EngineResource(ConfigurableResource):
    """Resolves the engine's typed config: profile (None = $SAM_ENGINE_PROFILE or ``default``) + JSON overrides."""

    profile: str | None = Field(
        default=None, description="smoke | default | scale; None reads SAM_ENGINE_PROFILE"
    )
    overrides: str = Field(default="{}", description='JSON object merged over the profile, e.g. {"seed": 3}')

    def config(self) -> EngineConfig:
        return load_config(self.profile, json.loads(self.overrides or "{}"))
