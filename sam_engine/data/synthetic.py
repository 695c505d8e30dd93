"""Seeded procedural scenes: the embedded default corpora.

Two domains, written to disk in the formats real data uses so the same code paths serve both:

- **domain A** (public corpus, "like COCO"): a few large objects on a textured, shaded background, each with
  its own texture and lighting, some made of differently coloured parts; every object is one ``whole`` mask
  (no part labels). The image then goes through a camera: lighting and colour cast, lens blur, sensor noise
  and JPEG compression (the masks stay exact), so what a model learns here carries over to photos.
- **domain B** (target pool and gold set, "like SA-1B photos"): textured, cluttered scenes with many objects,
  small ones included, occlusion, and composite objects built from parts with ``whole`` / ``part`` / ``subpart``
  ground truth (the ambiguity SAM's three outputs exist for). Each image belongs to a *region* with its own
  palette, texture and object mix, and sizes and aspect ratios vary.

Every image is drawn from its own ``SeedSequence([seed, domain, index])`` stream, so the same seed gives
byte-identical files whatever the number of worker processes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from . import rle as rle_utils

GENERATOR_VERSION = 2
MIN_MASK_AREA = 12

DOMAIN_PUBLIC, DOMAIN_POOL, DOMAIN_GOLD = 0, 1, 2
ID_OFFSETS = {DOMAIN_PUBLIC: 1_000_000, DOMAIN_POOL: 2_000_000, DOMAIN_GOLD: 3_000_000}


@dataclass(frozen=True)
class RegionStyle:
    """A region of the target pool: its palette, background texture and object mix."""

    name: str
    palette: tuple[tuple[int, int, int], ...]
    background: tuple[tuple[int, int, int], ...]
    texture: str  # noise | stripes | checker | blotches | grain
    shape_weights: dict[str, float]
    objects: tuple[int, int]  # min/max objects per image
    texture_amp: float = 0.18


REGIONS: tuple[RegionStyle, ...] = (
    RegionStyle(
        "urban",
        ((90, 90, 100), (160, 160, 170), (200, 60, 50), (230, 200, 60), (40, 40, 50), (120, 140, 170)),
        ((110, 110, 115), (150, 148, 140)),
        "checker",
        {"rect": 3, "house": 4, "polygon": 2, "ellipse": 1, "figure": 2},
        (10, 22),
    ),
    RegionStyle(
        "forest",
        ((30, 90, 40), (60, 130, 50), (100, 70, 40), (140, 110, 60), (180, 170, 90), (80, 50, 30)),
        ((50, 80, 45), (85, 105, 60)),
        "blotches",
        {"tree": 5, "ellipse": 3, "polygon": 1, "figure": 1},
        (8, 20),
    ),
    RegionStyle(
        "desert",
        ((200, 170, 110), (180, 130, 80), (230, 210, 160), (140, 90, 60), (90, 110, 60), (250, 240, 220)),
        ((215, 185, 135), (195, 160, 110)),
        "stripes",
        {"polygon": 3, "ellipse": 2, "house": 1, "star": 2, "tree": 1},
        (6, 16),
    ),
    RegionStyle(
        "coast",
        ((30, 80, 160), (70, 140, 200), (240, 240, 240), (230, 200, 150), (200, 80, 60), (20, 40, 80)),
        ((90, 150, 200), (200, 190, 160)),
        "noise",
        {"ellipse": 3, "boat": 4, "rect": 1, "figure": 2},
        (8, 18),
    ),
    RegionStyle(
        "market",
        ((220, 40, 60), (250, 160, 20), (40, 160, 80), (60, 80, 220), (240, 220, 40), (170, 40, 170)),
        ((120, 90, 70), (160, 130, 100)),
        "grain",
        {"ellipse": 3, "rect": 3, "star": 2, "figure": 2, "polygon": 2},
        (14, 28),
    ),
    RegionStyle(
        "indoor",
        ((200, 180, 170), (150, 120, 100), (90, 70, 60), (220, 220, 210), (120, 150, 160), (180, 90, 70)),
        ((210, 200, 185), (180, 170, 160)),
        "noise",
        {"rect": 3, "house": 1, "ellipse": 2, "figure": 1, "polygon": 2},
        (8, 18),
    ),
    RegionStyle(
        "snow",
        ((240, 245, 250), (180, 200, 220), (60, 70, 90), (200, 60, 60), (120, 140, 160), (30, 30, 40)),
        ((225, 232, 240), (205, 215, 228)),
        "grain",
        {"tree": 3, "house": 2, "figure": 2, "ellipse": 2},
        (6, 16),
    ),
    RegionStyle(
        "night",
        ((20, 20, 40), (240, 220, 120), (80, 60, 140), (40, 120, 140), (200, 200, 220), (120, 30, 60)),
        ((25, 25, 45), (45, 40, 70)),
        "blotches",
        {"house": 3, "star": 3, "rect": 2, "figure": 1},
        (6, 18),
    ),
)

PUBLIC_PALETTE = (
    (220, 50, 47),
    (38, 139, 210),
    (133, 153, 0),
    (181, 137, 0),
    (211, 54, 130),
    (42, 161, 152),
    (108, 113, 196),
    (203, 75, 22),
    (250, 250, 250),
    (30, 30, 30),
)


@dataclass
class Node:
    """One drawable part of an object; children are drawn on top of their parent."""

    shape: str
    params: tuple
    color: np.ndarray
    level: str
    children: list[Node] = field(default_factory=list)
    # optional HxW brightness modulation of this node (its own texture and shading): colour * (1 + shade)
    shade: np.ndarray | None = None


@dataclass
class Scene:
    """A rendered scene: the RGB image and the visible ground-truth annotations (RLE)."""

    image: np.ndarray
    annotations: list[dict]
    region: str | None


# ---------------------------------------------------------------------------------------------------- drawing


def _shape_bounds(shape: str, params: tuple) -> tuple[float, float, float, float]:
    if shape in ("ellipse", "rect"):
        return params
    xs, ys = [p[0] for p in params], [p[1] for p in params]
    return min(xs), min(ys), max(xs), max(ys)


def _shift(shape: str, params: tuple, dx: int, dy: int) -> tuple:
    if shape in ("ellipse", "rect"):
        x0, y0, x1, y1 = params
        return (x0 - dx, y0 - dy, x1 - dx, y1 - dy)
    return tuple((x - dx, y - dy) for x, y in params)


def _draw_clipped(shape: str, params: tuple, h: int, w: int) -> tuple[slice, slice, np.ndarray] | None:
    """Rasterise a shape inside its (image-clipped) bounding box: (rows, cols, bool mask) or None if off-image."""
    bx0, by0, bx1, by1 = _shape_bounds(shape, params)
    x0, y0 = max(0, int(math.floor(bx0)) - 1), max(0, int(math.floor(by0)) - 1)
    x1, y1 = min(w, int(math.ceil(bx1)) + 2), min(h, int(math.ceil(by1)) + 2)
    if x1 <= x0 or y1 <= y0:
        return None
    img = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(img)
    shifted = _shift(shape, params, x0, y0)
    if shape == "ellipse":
        draw.ellipse(shifted, fill=1)
    elif shape == "rect":
        draw.rectangle(shifted, fill=1)
    else:
        draw.polygon(shifted, fill=1)
    return slice(y0, y1), slice(x0, x1), np.asarray(img, dtype=bool)


def _regular_polygon(
    cx: float,
    cy: float,
    r: float,
    n: int,
    rot: float,
    rng: np.random.Generator,
    jitter: float = 0.25,
    star: bool = False,
) -> tuple:
    pts = []
    k = 2 * n if star else n
    for i in range(k):
        a = rot + 2 * math.pi * i / k
        rr = r * (0.45 if star and i % 2 else 1.0) * (1 + jitter * (rng.random() - 0.5))
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return tuple(pts)


def _rotated_rect(cx: float, cy: float, w: float, h: float, rot: float) -> tuple:
    c, s = math.cos(rot), math.sin(rot)
    pts = []
    for dx, dy in ((-w, -h), (w, -h), (w, h), (-w, h)):
        pts.append((cx + dx / 2 * c - dy / 2 * s, cy + dx / 2 * s + dy / 2 * c))
    return tuple(pts)


def _pick(rng: np.random.Generator, palette, jitter: int = 18) -> np.ndarray:
    base = np.asarray(palette[int(rng.integers(len(palette)))], dtype=np.float32)
    return np.clip(base + rng.normal(0, jitter, 3), 0, 255).astype(np.float32)


def _simple_node(
    kind: str, cx: float, cy: float, r: float, rng: np.random.Generator, color: np.ndarray
) -> Node:
    if kind == "ellipse":
        rx, ry = r * rng.uniform(0.6, 1.0), r * rng.uniform(0.6, 1.0)
        return Node("ellipse", (cx - rx, cy - ry, cx + rx, cy + ry), color, "whole")
    if kind == "rect":
        return Node(
            "polygon",
            _rotated_rect(
                cx, cy, 2 * r * rng.uniform(0.6, 1.0), 2 * r * rng.uniform(0.4, 1.0), rng.uniform(-0.4, 0.4)
            ),
            color,
            "whole",
        )
    if kind == "star":
        return Node(
            "polygon",
            _regular_polygon(cx, cy, r, int(rng.integers(4, 7)), rng.uniform(0, 6.28), rng, 0.1, True),
            color,
            "whole",
        )
    return Node(
        "polygon",
        _regular_polygon(cx, cy, r, int(rng.integers(3, 8)), rng.uniform(0, 6.28), rng),
        color,
        "whole",
    )


def _composite_node(kind: str, cx: float, cy: float, r: float, rng: np.random.Generator, palette) -> Node:
    """Objects made of parts (and sub-parts): the whole / part / subpart ambiguity."""
    if kind == "house":
        w, h = 2 * r * rng.uniform(0.7, 1.0), r * rng.uniform(0.8, 1.1)
        top = cy - h / 2 + r * 0.3
        walls = Node("rect", (cx - w / 2, top, cx + w / 2, top + h), _pick(rng, palette), "part")
        ww = w * 0.22
        walls.children.append(
            Node(
                "rect",
                (cx - w / 2 + w * 0.12, top + h * 0.2, cx - w / 2 + w * 0.12 + ww, top + h * 0.2 + ww),
                _pick(rng, palette),
                "subpart",
            )
        )
        walls.children.append(
            Node(
                "rect",
                (cx + w * 0.08, top + h * 0.35, cx + w * 0.08 + ww * 0.9, top + h),
                _pick(rng, palette),
                "subpart",
            )
        )
        roof = Node(
            "polygon",
            ((cx - w / 2 - r * 0.1, top), (cx + w / 2 + r * 0.1, top), (cx, top - r * 0.7)),
            _pick(rng, palette),
            "part",
        )
        root = Node("group", (), walls.color, "whole", [walls, roof])
        return root
    if kind == "tree":
        tw = r * rng.uniform(0.18, 0.3)
        trunk = Node("rect", (cx - tw / 2, cy, cx + tw / 2, cy + r), _pick(rng, palette), "part")
        cr = r * rng.uniform(0.6, 0.85)
        crown = Node("ellipse", (cx - cr, cy - 1.4 * cr, cx + cr, cy + 0.3 * cr), _pick(rng, palette), "part")
        return Node("group", (), trunk.color, "whole", [trunk, crown])
    if kind == "figure":
        hr = r * 0.28
        head = Node("ellipse", (cx - hr, cy - r, cx + hr, cy - r + 2 * hr), _pick(rng, palette), "part")
        bw = r * rng.uniform(0.45, 0.65)
        body = Node(
            "rect", (cx - bw / 2, cy - r + 2 * hr, cx + bw / 2, cy + r * 0.9), _pick(rng, palette), "part"
        )
        body.children.append(
            Node(
                "rect",
                (cx - bw / 2, cy + r * 0.15, cx + bw / 2, cy + r * 0.35),
                _pick(rng, palette),
                "subpart",
            )
        )
        return Node("group", (), body.color, "whole", [body, head])
    # boat
    w = 2 * r * rng.uniform(0.8, 1.0)
    hull = Node(
        "polygon",
        ((cx - w / 2, cy), (cx + w / 2, cy), (cx + w * 0.35, cy + r * 0.45), (cx - w * 0.35, cy + r * 0.45)),
        _pick(rng, palette),
        "part",
    )
    sail = Node(
        "polygon",
        ((cx - w * 0.05, cy - r * 0.05), (cx - w * 0.05, cy - r), (cx + w * 0.35, cy - r * 0.05)),
        _pick(rng, palette),
        "part",
    )
    return Node("group", (), hull.color, "whole", [hull, sail])


# ---------------------------------------------------------------------------------------------------- textures

TEXTURES = ("noise", "stripes", "checker", "blotches", "grain")


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    small = rng.random((max(2, cells), max(2, cells))).astype(np.float32)
    img = Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 127.5 - 1.0


def _texture(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A zero-mean texture field in about [-1, 1]."""
    if kind == "stripes":
        theta, period = rng.uniform(0, math.pi), rng.uniform(6, 18)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        return np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period).astype(np.float32)
    if kind == "checker":
        s = int(rng.integers(6, 16))
        yy, xx = np.mgrid[0:h, 0:w]
        return (((yy // s + xx // s) % 2) * 2 - 1).astype(np.float32) * 0.6
    if kind == "blotches":
        return 0.6 * _smooth_noise(rng, h, w, 6) + 0.4 * _smooth_noise(rng, h, w, 24)
    if kind == "grain":
        return (rng.random((h, w), dtype=np.float32) * 2 - 1) * 0.7 + 0.3 * _smooth_noise(rng, h, w, 12)
    return _smooth_noise(rng, h, w, int(rng.integers(8, 20)))


# ---------------------------------------------------------------------------------------------------- rendering


def _render(
    h: int, w: int, background: np.ndarray, roots: list[Node], tex: np.ndarray | None, amp: float
) -> tuple[np.ndarray, list[tuple[Node, int, np.ndarray]]]:
    """Paint the objects in order; return the image and (node, depth, visible mask) for every node.

    Nodes are numbered in pre-order, so a node and its descendants hold a contiguous index range and the
    visible mask of a node is where the top-most painted index falls in that range.
    """
    canvas = background.copy()
    leaf = np.full((h, w), -1, dtype=np.int32)
    flat: list[list] = []  # node, depth, subtree end, subtree box [y0, y1, x0, x1]

    def paint(node: Node, depth: int) -> list[int]:
        entry = [node, depth, 0, [h, 0, w, 0]]
        idx = len(flat)
        flat.append(entry)
        box = entry[3]
        if node.shape != "group":
            drawn = _draw_clipped(node.shape, node.params, h, w)
            if drawn is not None:
                rows, cols, m = drawn
                leaf[rows, cols][m] = idx
                region = canvas[rows, cols]
                if node.shade is not None:
                    region[m] = node.color[None, :] * (1.0 + node.shade[rows, cols][m][:, None])
                elif tex is not None:
                    region[m] = node.color[None, :] * (1.0 + amp * tex[rows, cols][m][:, None])
                else:
                    region[m] = node.color
                box[:] = [
                    min(box[0], rows.start),
                    max(box[1], rows.stop),
                    min(box[2], cols.start),
                    max(box[3], cols.stop),
                ]
        for child in node.children:
            cb = paint(child, depth + 1)
            box[:] = [min(box[0], cb[0]), max(box[1], cb[1]), min(box[2], cb[2]), max(box[3], cb[3])]
        entry[2] = len(flat)
        return box

    for root in roots:
        paint(root, 0)
    out = []
    for i, (node, depth, end, (y0, y1, x0, x1)) in enumerate(flat):
        mask = np.zeros((h, w), dtype=bool)
        if y1 > y0 and x1 > x0:
            sub = leaf[y0:y1, x0:x1]
            mask[y0:y1, x0:x1] = (sub >= i) & (sub < end)
        out.append((node, depth, mask))
    return np.clip(canvas, 0, 255).astype(np.uint8), out


def _annotations(nodes: list[tuple[Node, int, np.ndarray]], image_id: int) -> list[dict]:
    anns: list[dict] = []
    index_to_id: dict[int, int] = {}
    parents: list[int] = []
    # recover parent indices from depth order (pre-order traversal)
    stack: list[int] = []
    for i, (_, depth, _) in enumerate(nodes):
        while len(stack) > depth:
            stack.pop()
        parents.append(stack[-1] if stack else -1)
        stack.append(i)
    areas = [int(m.sum()) for _, _, m in nodes]
    for i, (node, _, mask) in enumerate(nodes):
        area = areas[i]
        if area < MIN_MASK_AREA:
            continue
        if parents[i] >= 0 and areas[parents[i]] == area:
            # the only visible piece of its parent: the same mask, kept once at the parent's level
            if parents[i] in index_to_id:
                index_to_id[i] = index_to_id[parents[i]]
            continue
        ann_id = image_id * 1000 + len(anns) + 1
        index_to_id[i] = ann_id
        parent_id = index_to_id.get(parents[i]) if parents[i] >= 0 else None
        seg = rle_utils.encode(mask)
        anns.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": 1,
                "segmentation": seg,
                "area": area,
                "bbox": rle_utils.bbox_xywh(seg),
                "iscrowd": 0,
                "level": node.level,
                "parent_id": parent_id,
            }
        )
    return anns


def _size(rng: np.random.Generator, lo: int, hi: int, aspect: tuple[float, float]) -> tuple[int, int]:
    long_side = int(rng.integers(lo, hi + 1))
    ratio = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
    if ratio >= 1:
        w, h = long_side, max(lo // 2, int(round(long_side / ratio)))
    else:
        h, w = long_side, max(lo // 2, int(round(long_side * ratio)))
    return h, w


def _shading(rng: np.random.Generator, h: int, w: int, strength: float) -> np.ndarray:
    """A linear brightness ramp in a random direction, zero-mean, spanning about +-``strength``."""
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (xx * math.cos(theta) + yy * math.sin(theta)) / max(h, w)
    return (ramp - ramp.mean()) * (2 * strength)


def _camera(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photographic statistics on a float HxWx3 render: lighting gain and colour cast, lens blur, sensor
    noise and (half the time) a JPEG round trip; returns uint8."""
    from PIL import ImageFilter

    gain = rng.uniform(0.75, 1.2) * rng.uniform(0.92, 1.08, 3)
    img = np.clip(image * gain + rng.uniform(-12, 12), 0, 255).astype(np.uint8)
    pil = Image.fromarray(img)
    sigma = rng.uniform(0.0, 1.2)
    if sigma > 0.3:
        pil = pil.filter(ImageFilter.GaussianBlur(radius=sigma))
    noisy = np.asarray(pil, dtype=np.float32) + rng.normal(0, rng.uniform(0.5, 6.0), img.shape)
    img = np.clip(noisy, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(rng.integers(45, 96)))
        img = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return img


def public_scene(seed: int, index: int, size_range: tuple[int, int]) -> Scene:
    """Domain A: 1-6 large textured, shaded objects (a third built from differently coloured parts) on a
    textured background, through :func:`_camera`; every object is one ``whole`` mask."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, DOMAIN_PUBLIC, index]))
    h, w = _size(rng, size_range[0], size_range[1], (0.75, 1.33))
    bg_a, bg_b = _pick(rng, PUBLIC_PALETTE, 30), _pick(rng, PUBLIC_PALETTE, 30)
    t = _smooth_noise(rng, h, w, 3)[:, :, None] * 0.5 + 0.5
    bg_tex = _texture(TEXTURES[int(rng.integers(len(TEXTURES)))], rng, h, w) * rng.uniform(0.0, 0.25)
    background = (bg_a * (1 - t) + bg_b * t) * (
        1.0 + bg_tex[:, :, None] + _shading(rng, h, w, 0.15)[:, :, None]
    )
    roots = []
    side = min(h, w)
    for _ in range(int(rng.integers(1, 7))):
        r = side * rng.uniform(0.08, 0.25)
        cx, cy = rng.uniform(r * 0.5, w - r * 0.5), rng.uniform(r * 0.5, h - r * 0.5)
        if rng.random() < 0.35:
            kind = ("house", "tree", "figure", "boat")[int(rng.integers(4))]
            node = _composite_node(kind, cx, cy, r * 1.2, rng, PUBLIC_PALETTE)
        else:
            kind = ("ellipse", "rect", "polygon", "star")[int(rng.integers(4))]
            node = _simple_node(kind, cx, cy, r, rng, _pick(rng, PUBLIC_PALETTE, 20))
        tex = _texture(TEXTURES[int(rng.integers(len(TEXTURES)))], rng, h, w) * rng.uniform(0.0, 0.3)
        shade = tex + _shading(rng, h, w, rng.uniform(0.0, 0.25))
        stack = [node]
        while stack:  # the whole object shares one texture and light
            n = stack.pop()
            n.shade = shade
            stack.extend(n.children)
        roots.append(node)
    image, nodes = _render(h, w, background.astype(np.float32), roots, None, 0.0)
    image_id = ID_OFFSETS[DOMAIN_PUBLIC] + index
    wholes = [a for a in _annotations(nodes, image_id) if a["level"] == "whole"]
    for k, ann in enumerate(wholes):  # ids stay dense per image once parts are left out
        ann["id"], ann["parent_id"] = image_id * 1000 + k + 1, None
    return Scene(_camera(image, rng), wholes, None)


def region_for(seed: int, domain: int, index: int, n_regions: int) -> RegionStyle:
    rng = np.random.default_rng(np.random.SeedSequence([seed, domain, index, 7]))
    # regions are deliberately unbalanced (like real pools): weights fall off with the region index
    weights = np.array([1.0 / (1 + 0.35 * i) for i in range(n_regions)])
    return REGIONS[int(rng.choice(n_regions, p=weights / weights.sum()))]


def pool_scene(
    seed: int, index: int, size_range: tuple[int, int], n_regions: int, domain: int = DOMAIN_POOL
) -> Scene:
    """Domain B: textured, cluttered scene of one region with many objects, parts and occlusion."""
    if not 1 <= n_regions <= len(REGIONS):
        raise ValueError(f"n_regions must be in [1, {len(REGIONS)}], got {n_regions}")
    region = region_for(seed, domain, index, n_regions)
    rng = np.random.default_rng(np.random.SeedSequence([seed, domain, index]))
    h, w = _size(rng, size_range[0], size_range[1], (0.6, 1.7))
    tex = _texture(region.texture, rng, h, w)
    bg_a, bg_b = _pick(rng, region.background, 12), _pick(rng, region.background, 12)
    t = _smooth_noise(rng, h, w, 3)[:, :, None] * 0.5 + 0.5
    background = (bg_a * (1 - t) + bg_b * t) * (1.0 + region.texture_amp * tex[:, :, None])
    kinds = list(region.shape_weights)
    p = np.array([region.shape_weights[k] for k in kinds], dtype=np.float64)
    n_obj = int(rng.integers(region.objects[0], region.objects[1] + 1))
    side = min(h, w)
    roots = []
    for _ in range(n_obj):
        # log-uniform sizes: many small objects, a few large ones
        r = side * math.exp(rng.uniform(math.log(0.03), math.log(0.22)))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
        if kind in ("house", "tree", "figure", "boat"):
            roots.append(_composite_node(kind, cx, cy, r * 1.3, rng, region.palette))
        else:
            roots.append(_simple_node(kind, cx, cy, r, rng, _pick(rng, region.palette)))
    image, nodes = _render(h, w, background.astype(np.float32), roots, tex, region.texture_amp)
    image_id = ID_OFFSETS[domain] + index
    return Scene(image, _annotations(nodes, image_id), region.name)
