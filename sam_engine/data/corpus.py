"""The in-memory shape every dataset reader returns: images, their masks, and the quarantine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import Quarantine


@dataclass(frozen=True)
class ImageRecord:
    """One image of a corpus. ``path`` is an absolute local ``Path``, or the image's URL (a ``str``) when the
    pool is a remote folder (read it through ``sam_engine.storage``); ``region`` is the target pool's region
    label."""

    image_id: int
    path: Path | str
    width: int
    height: int
    file_name: str = ""
    region: str | None = None


@dataclass
class MaskCorpus:
    """Images and their mask annotations (COCO-style dicts whose ``segmentation`` is compressed RLE)."""

    images: list[ImageRecord]
    annotations: dict[int, list[dict]] = field(default_factory=dict)
    quarantine: Quarantine = field(default_factory=Quarantine)
    source: str = ""

    def masks_for(self, image_id: int) -> list[dict]:
        return self.annotations.get(image_id, [])

    @property
    def num_masks(self) -> int:
        return sum(len(v) for v in self.annotations.values())

    def subset(self, image_ids: set[int]) -> MaskCorpus:
        """A corpus restricted to ``image_ids`` (same quarantine)."""
        images = [im for im in self.images if im.image_id in image_ids]
        ann = {i: self.annotations[i] for i in image_ids if i in self.annotations}
        return MaskCorpus(images=images, annotations=ann, quarantine=self.quarantine, source=self.source)
