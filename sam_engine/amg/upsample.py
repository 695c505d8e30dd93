"""Cut-off tests of upsampled mask logits, computed only where the answer is not already known.

SAM turns a low-res logit map into a mask at image size with two bilinear resizes (to the model's input
square, crop the padding, to the crop's size) and then only compares the result with a few cut-offs: the
mask threshold, and threshold ± offset for the stability score. Bilinear resizing is linear and separable, so
the chain is ``out = Ay @ L @ Ax.T`` with fixed row and column matrices, and every output pixel is a convex
combination of a few neighbouring low-res values.

:class:`TiledThreshold` uses that: the output is cut into tiles, one per block of low-res cells. A tile whose
low-res neighbourhood lies wholly above (or below) a cut-off is wholly above (below) it, so its pixels are
counted, not computed; only tiles that straddle a cut-off are evaluated, with two small matrix products each.
The matrices come from ``F.interpolate`` itself applied to unit vectors, so values equal those of the dense
chain up to float rounding (about 1e-6: a pixel that close to a cut-off may fall either way). Tiles within
``margin`` of a cut-off are always evaluated, so rounding never decides a skipped tile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from .filters import count_true


@lru_cache(maxsize=64)
def resize_matrix(low: int, square: int, valid: int, out: int) -> torch.Tensor:
    """(out, low) float32 matrix of SAM's 1-D resize chain: ``low -> square``, keep ``[:valid]``, ``-> out``.

    Column ``a`` is the chain applied to the unit vector at ``a`` through ``F.interpolate`` (bilinear,
    ``align_corners=False``, as ``Sam.postprocess_masks``), so it carries PyTorch's own index arithmetic.
    """
    eye = torch.eye(low, dtype=torch.float32).reshape(1, low, low, 1)
    x = F.interpolate(eye, (square, 1), mode="bilinear", align_corners=False)[:, :, :valid]
    x = F.interpolate(x, (out, 1), mode="bilinear", align_corners=False)
    return x[0, :, :, 0].T.contiguous()


class _Axis:
    """One axis of the tiling: output lines in tiles of ``tile``, and the low-res window each tile reads.

    Tile ``i`` holds output lines ``[i * tile, (i + 1) * tile)`` (the last one padded past the end); it reads
    low-res lines ``[start[i], start[i] + window)``. ``weights[i]`` is the resize matrix restricted to those
    lines and that window (zero rows for padding).
    """

    def __init__(self, matrix: torch.Tensor, tile: int) -> None:
        out, low = matrix.shape
        nonzero = (matrix != 0).to(torch.int8)
        first = nonzero.argmax(dim=1)
        last = low - 1 - nonzero.flip(1).argmax(dim=1)
        self.tile = tile
        self.tiles = -(-out // tile)
        heads = torch.arange(self.tiles) * tile
        self.start = first[heads]
        end = last[(heads + tile - 1).clamp(max=out - 1)]
        self.window = int((end - self.start).max()) + 1
        self.pad = max(0, int(self.start.max()) + self.window - low)  # low-res lines added at the end
        lines = heads[:, None] + torch.arange(tile)[None, :]  # (tiles, tile)
        self.valid = lines < out
        self.count = self.valid.sum(dim=1)  # real output lines per tile
        padded = F.pad(matrix, (0, self.pad))
        cols = self.start[:, None] + torch.arange(self.window)[None, :]
        self.weights = padded[lines.clamp(max=out - 1)[:, :, None], cols[:, None, :]] * self.valid[:, :, None]


@dataclass
class TileScan:
    """The result of :meth:`TiledThreshold.scan` for n masks.

    ``counts``: (n, len(cuts)) int64, output pixels above each cut-off. The rest is what :meth:`masks` needs.
    """

    counts: torch.Tensor
    cuts: tuple[float, ...]
    above: torch.Tensor  # (n, tiles_y, tiles_x, len(cuts)) bool: tile skipped and wholly above the cut-off
    tiles: torch.Tensor  # (U, 3) long: (mask, tile row, tile col) of every evaluated tile
    values: torch.Tensor  # (U, tile, tile) float: the evaluated tiles' pixels (padding at -inf)
    geometry: TiledThreshold

    def masks(self, rows: torch.Tensor, cut_index: int) -> torch.Tensor:
        """(k, W, H) boolean masks ``> cuts[cut_index]`` of the masks ``rows`` lists, column-major per mask.

        The result may be a non-contiguous view (when the tiles overhang the output).
        """
        g = self.geometry
        ry, rx = g.rows, g.cols
        dev = self.counts.device
        k, (height, width) = len(rows), g.out_size
        # Tile layout, column-major: (k, tiles_x, tile, tiles_y, tile); skipped tiles by broadcast.
        verdict = self.above[rows, :, :, cut_index].transpose(1, 2)  # (k, tiles_x, tiles_y)
        column = verdict[..., None].expand(k, rx.tiles, ry.tiles, ry.tile).reshape(k, rx.tiles, 1, -1)
        canvas = column.expand(k, rx.tiles, rx.tile, ry.tiles * ry.tile).contiguous()
        canvas = canvas.view(k, rx.tiles, rx.tile, ry.tiles, ry.tile)
        slot = torch.full((len(self.counts),), -1, dtype=torch.long, device=dev)
        slot[rows] = torch.arange(k, device=dev)
        mine = slot[self.tiles[:, 0]]
        sel = torch.nonzero(mine >= 0).flatten()
        if len(sel):
            m, r, c = mine[sel], self.tiles[sel, 1], self.tiles[sel, 2]
            canvas[m, c, :, r, :] = self.values[sel].transpose(1, 2) > self.cuts[cut_index]
        out = canvas.view(k, rx.tiles * rx.tile, ry.tiles * ry.tile)
        return out[:, :width, :height]


class TiledThreshold:
    """Cut-off tests of SAM's upsampled logits for one geometry.

    ``low_size``: the logits' (h, w); ``square``: the model's input side; ``input_size``: the resized image
    inside that square; ``out_size``: the crop's (H, W); ``tile``: output pixels per tile side.
    """

    def __init__(
        self,
        low_size: tuple[int, int],
        square: int,
        input_size: tuple[int, int],
        out_size: tuple[int, int],
        tile: int = 16,
        margin: float = 1e-3,
    ) -> None:
        ay = resize_matrix(low_size[0], square, input_size[0], out_size[0])
        ax = resize_matrix(low_size[1], square, input_size[1], out_size[1])
        self.low_size, self.out_size, self.margin = tuple(low_size), tuple(out_size), margin
        self.rows, self.cols = _Axis(ay, tile), _Axis(ax, tile)
        self.tile_pixels = self.rows.count[:, None] * self.cols.count[None, :]  # (tiles_y, tiles_x)

    @staticmethod
    @lru_cache(maxsize=32)
    def cached(
        low_size: tuple[int, int], square: int, input_size: tuple[int, int], out_size: tuple[int, int]
    ) -> TiledThreshold:
        """One shared instance per geometry: the matrices and layouts are built once."""
        return TiledThreshold(low_size, square, input_size, out_size)

    def _pad(self, logits: torch.Tensor, value: float) -> torch.Tensor:
        return F.pad(logits, (0, self.cols.pad, 0, self.rows.pad), value=value)

    def scan(self, logits: torch.Tensor, cuts: Sequence[float]) -> TileScan:
        """Count the output pixels above each cut-off for (n, h, w) low-res logits."""
        if tuple(logits.shape[1:]) != self.low_size:
            raise ValueError(f"logits of size {tuple(logits.shape[1:])}, expected {self.low_size}")
        cuts = tuple(float(c) for c in cuts)
        logits = logits.float()
        dev = logits.device
        ry, rx = self.rows, self.cols
        sy, sx = ry.start.to(dev), rx.start.to(dev)
        # Min / max of each tile's low-res window, separably: over its rows, then over its columns.
        padded = self._pad(logits, float("nan"))
        band = padded.unfold(1, ry.window, 1)[:, sy]  # (n, tiles_y, w, window_y)
        band = torch.stack([band.nan_to_num(float("inf")).amin(-1), band.nan_to_num(float("-inf")).amax(-1)])
        block = band.unfold(3, rx.window, 1)[:, :, :, sx]  # (2, n, tiles_y, tiles_x, window_x)
        lo = block[0].amin(-1)
        hi = block[1].amax(-1)
        cut = torch.tensor(cuts, device=dev)
        above = lo[..., None] > cut + self.margin  # (n, tiles_y, tiles_x, C)
        below = hi[..., None] < cut - self.margin
        open_ = ~(above | below).all(dim=-1)  # tiles that straddle some cut-off
        above &= ~open_[..., None]
        pixels = self.tile_pixels.to(dev)
        counts = (above * pixels[None, :, :, None]).sum(dim=(1, 2))  # (n, C) from the skipped tiles
        tiles = torch.nonzero(open_)
        if len(tiles):
            m, r, c = tiles.unbind(1)
            windows = self._pad(logits, 0.0).unfold(1, ry.window, 1).unfold(2, rx.window, 1)
            windows = windows[m, sy[r], sx[c]]  # (U, window_y, window_x)
            wy, wx = ry.weights.to(dev)[r], rx.weights.to(dev)[c]
            values = wy @ windows @ wx.transpose(1, 2)  # (U, tile, tile)
            if not (bool(ry.valid.all()) and bool(rx.valid.all())):
                valid = ry.valid.to(dev)[r][:, :, None] & rx.valid.to(dev)[c][:, None, :]
                values.masked_fill_(~valid, float("-inf"))
            flat = values.reshape(len(tiles), -1)
            for j, v in enumerate(cuts):
                counts[:, j].index_add_(0, m, count_true(flat > v).to(counts.dtype))
        else:
            values = logits.new_zeros(0, ry.tile, rx.tile)
        return TileScan(counts=counts, cuts=cuts, above=above, tiles=tiles, values=values, geometry=self)
