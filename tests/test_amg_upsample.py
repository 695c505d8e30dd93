"""Tiled cut-off tests of upsampled logits agree with SAM's dense two-resize chain."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sam_engine.amg.upsample import TiledThreshold, resize_matrix

CUTS = (-1.0, 0.0, 1.0)


def _dense(logits: torch.Tensor, square: int, input_size, out_size) -> torch.Tensor:
    """The chain of ``Sam.postprocess_masks``: to the square, drop padding, to the output size."""
    x = F.interpolate(logits[:, None], (square, square), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, tuple(out_size), mode="bilinear", align_corners=False)[:, 0]


def _logits(n: int, size: int, seed: int) -> torch.Tensor:
    """Object-like logits: smooth blobs (deep inside / outside) plus noise; a few flat rows."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 1, 6, 6, generator=g) * 8
    x = F.interpolate(coarse, (size, size), mode="bilinear", align_corners=False)[:, 0]
    x = x + torch.randn(n, size, size, generator=g) * 0.7
    x[0] = -12.0  # empty
    x[1] = 15.0  # everything
    return x


def _away_from_cuts(values: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Pixels where float rounding cannot flip a comparison with any cut-off."""
    return torch.stack([(values - c).abs() > eps for c in CUTS]).all(dim=0)


def test_resize_matrix_is_the_dense_chain():
    x = torch.randn(3, 64, 64)
    ay = resize_matrix(64, 256, 200, 333)
    ax = resize_matrix(64, 256, 256, 417)
    torch.testing.assert_close(ay @ x @ ax.T, _dense(x, 256, (200, 256), (333, 417)), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("input_size", "out_size", "tile"),
    [
        ((192, 256), (480, 640), 16),  # upsample, input padded at the bottom
        ((256, 200), (300, 234), 16),  # tile does not divide the output
        ((256, 256), (50, 40), 16),  # downsample: output smaller than the low-res grid
        ((100, 256), (40, 101), 7),
        ((256, 256), (256, 256), 1),  # one pixel per tile
    ],
)
def test_counts_and_masks_equal_the_dense_thresholds(input_size, out_size, tile):
    logits = _logits(12, 64, seed=sum(out_size))
    geometry = TiledThreshold((64, 64), 256, input_size, out_size, tile=tile)
    scan = geometry.scan(logits, CUTS)
    dense = _dense(logits, 256, input_size, out_size)
    safe = _away_from_cuts(dense)
    assert safe.float().mean() > 0.99
    for j, c in enumerate(CUTS):
        above = dense > c
        # Counts match exactly wherever rounding cannot decide; the rare close pixels at most move by one.
        unsure = (~safe).flatten(1).sum(1)
        assert ((scan.counts[:, j] - above.flatten(1).sum(1)).abs() <= unsure).all()
    rows = torch.tensor([1, 3, 4, 7, 11])
    masks = scan.masks(rows, CUTS.index(0.0))
    assert masks.shape == (5, out_size[1], out_size[0])
    expected = (dense[rows] > 0).transpose(1, 2)
    safe_rows = safe[rows].transpose(1, 2)
    assert torch.equal(masks[safe_rows], expected[safe_rows])
    assert scan.counts[0].tolist() == [0, 0, 0]
    assert scan.counts[1].tolist() == [out_size[0] * out_size[1]] * 3


def test_only_tiles_that_straddle_a_cut_are_evaluated():
    logits = _logits(6, 64, seed=3)
    geometry = TiledThreshold((64, 64), 256, (256, 256), (512, 512))
    scan = geometry.scan(logits, CUTS)
    total = 6 * geometry.rows.tiles * geometry.cols.tiles
    assert 0 < len(scan.tiles) < total // 2
    assert not (scan.tiles[:, 0] <= 1).any()  # the flat rows need no pixel at all
    # Every skipped tile is wholly on one side of every cut-off (so counting it whole is right).
    dense = _dense(logits, 256, (256, 256), (512, 512)).view(6, 32, 16, 32, 16)
    lo, hi = dense.amin(dim=(2, 4)), dense.amax(dim=(2, 4))
    skipped = torch.ones(6, 32, 32, dtype=torch.bool)
    skipped[tuple(scan.tiles.T)] = False
    for c in CUTS:
        assert ((lo[skipped] > c) | (hi[skipped] <= c)).all()


def test_scan_rejects_logits_of_another_size():
    geometry = TiledThreshold((64, 64), 256, (256, 256), (100, 100))
    with pytest.raises(ValueError, match="expected"):
        geometry.scan(torch.zeros(2, 32, 32), CUTS)


def test_cached_geometry_is_shared():
    a = TiledThreshold.cached((64, 64), 256, (256, 192), (300, 225))
    assert a is TiledThreshold.cached((64, 64), 256, (256, 192), (300, 225))
