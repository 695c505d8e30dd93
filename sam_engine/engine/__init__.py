"""The engine's stages as plain functions (the Dagster assets in ``assets/`` are thin wrappers over these)."""
