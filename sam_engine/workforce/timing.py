"""The documented time model of a simulated annotator: seconds per mask from counted actions.

Clicks are counted, never modelled; only the seconds they cost are. One object costs

    seconds = speed · jitter · (OBJECT_OVERHEAD_S + PER_CLICK_S · clicks + MANUAL_FIX_S · manual_fix)

and one image adds ``IMAGE_OVERHEAD_S · speed`` once (open, scan for objects). ``speed`` is the profile's
speed factor (1.0 = the reference annotator, 1.5 = half again as slow); ``jitter`` is a seeded log-normal
factor with median 1 (``sigma`` from the profile, 0 = none). A review verdict costs ``REVIEW_S · speed``.

Anchors (SAM paper, §4 "Segment Anything Data Engine"): in stage 1 the mean time per mask fell from 34 s to
14 s as the model improved (14 s is 6.5x faster than COCO's polygon masks, ~91 s, and 2x slower than extreme-
point boxes, ~7 s); annotators were told to move on once a mask took over 30 s. In stage 2 the time per
human mask went back up to 34 s because the objects left were the hard ones. The constants below are not
measurements of ours; they are chosen so those anchors are reproduced at plausible click counts:

- a good model (1–2 clicks): 3 + 2·1.5 = 6 s; a mid model (5 clicks): 3 + 2·5 = 13 s ≈ SAM's end of stage 1;
- a weak model (8–10 clicks, a third to a half of the masks fixed by hand): 3 + 16..20 + 8..12.5 ≈ 27–36 s
  ≈ SAM's 34 s at the start of stage 1.

A manual fix (brush / polygon correction of a mask the model could not get right) costs ``MANUAL_FIX_S``,
well under COCO's ~91 s from scratch because the model's mask is a starting point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Reference seconds (speed factor 1.0).
OBJECT_OVERHEAD_S = 3.0  # find the object, look at the 3 outputs, choose, accept
PER_CLICK_S = 2.0  # place one click and inspect the updated mask
MANUAL_FIX_S = 25.0  # brush / polygon correction when the model cannot reach the target
IMAGE_OVERHEAD_S = 5.0  # open the image, scan it for objects (once per image)
REVIEW_S = 4.0  # accept / reject one mask in a review task

# SAM's measured anchors, for reports and benchmarks that compare against them.
SAM_STAGE1_SECONDS_PER_MASK_START = 34.0
SAM_STAGE1_SECONDS_PER_MASK_END = 14.0
SAM_STAGE2_SECONDS_PER_MASK = 34.0
SAM_MOVE_ON_AFTER_S = 30.0


@dataclass(frozen=True)
class TimeModel:
    """The constants of the time model; the module-level defaults are the documented reference."""

    object_overhead_s: float = OBJECT_OVERHEAD_S
    per_click_s: float = PER_CLICK_S
    manual_fix_s: float = MANUAL_FIX_S
    image_overhead_s: float = IMAGE_OVERHEAD_S
    review_s: float = REVIEW_S

    def __post_init__(self) -> None:
        for name in ("object_overhead_s", "per_click_s", "manual_fix_s", "image_overhead_s", "review_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"TimeModel.{name} must be >= 0, got {getattr(self, name)}")

    def mask_seconds(
        self,
        clicks: int,
        manual_fix: bool = False,
        speed: float = 1.0,
        jitter_sigma: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> float:
        """Seconds one annotator spends on one object: overhead + clicks + optional manual fix."""
        if clicks < 0:
            raise ValueError(f"clicks must be >= 0, got {clicks}")
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        base = self.object_overhead_s + self.per_click_s * clicks + (self.manual_fix_s if manual_fix else 0.0)
        return float(base * speed * _jitter(jitter_sigma, rng))

    def image_seconds(self, speed: float = 1.0) -> float:
        """Per-image overhead (opening and scanning the image)."""
        return float(self.image_overhead_s * speed)

    def review_seconds(self, speed: float = 1.0) -> float:
        """Seconds for one review verdict."""
        return float(self.review_s * speed)


def _jitter(sigma: float, rng: np.random.Generator | None) -> float:
    if sigma <= 0 or rng is None:
        return 1.0
    return float(np.exp(rng.normal(0.0, sigma)))


DEFAULT_TIME_MODEL = TimeModel()
