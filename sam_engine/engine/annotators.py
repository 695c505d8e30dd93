"""The engine's annotator pool: simulated annotators (profiles, region expertise) and reviewers in the store."""

from __future__ import annotations

from ..workforce.simulated import PROFILES, AnnotatorProfile

PROFILE_CYCLE = ("expert", "reference", "fast", "reference", "expert", "sloppy")


def ensure_annotators(
    store, n_annotators: int, n_reviewers: int, regions: list[str]
) -> dict[str, AnnotatorProfile]:
    """Create ``ann_01 ...`` and ``rev_01 ...`` if missing; return annotator id -> simulated profile.

    Expertise: each annotator knows two regions, round-robin, so every region has experts.
    """
    profiles: dict[str, AnnotatorProfile] = {}
    regions = sorted(r for r in regions if r)
    for i in range(n_annotators):
        aid = f"ann_{i + 1:02d}"
        profile = PROFILES[PROFILE_CYCLE[i % len(PROFILE_CYCLE)]]
        expertise = [regions[(2 * i + k) % len(regions)] for k in range(2)] if regions else []
        if store.get_annotator(aid) is None:
            store.add_annotator(aid, "annotator", expertise=expertise, profile={"simulated": profile.name})
        profiles[aid] = profile
    for i in range(n_reviewers):
        rid = f"rev_{i + 1:02d}"
        if store.get_annotator(rid) is None:
            store.add_annotator(rid, "reviewer", profile={"simulated": "reviewer"})
    return profiles
