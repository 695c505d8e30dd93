"""RLE text the tests write by hand (hostile counts strings, property checks)."""

from __future__ import annotations


def counts_string(runs: list[int]) -> str:
    """COCO's compressed-counts text for a run list (delta coding from the third run, 5-bit groups)."""
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = not ((c & 0x10) == 0 and x == 0 or (c & 0x10) != 0 and x == -1)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)
