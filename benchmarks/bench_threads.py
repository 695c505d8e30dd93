"""The thread cliff: two concurrent torch processes, with the engine's thread policy and with torch's default.

A fixed training workload (forward + backward + AdamW steps of the default model) runs in a subprocess
alone with every core, then as two concurrent subprocesses, once with each taking
``sam_engine.threads.torch_threads(concurrent=2)`` threads (the engine's policy) and once with torch's default
(every core each). Rows: seconds per step of the slower concurrent process, as a ratio to the run alone
(the policy should stay within 2x; torch's default oversubscribes the cores).
"""

from __future__ import annotations

import os
import subprocess
import sys

BENCH = "threads"

_WORKLOAD = r"""
import sys, time, torch
threads, steps, batch = (int(a) for a in sys.argv[1:4])
if threads > 0:
    torch.set_num_threads(threads)
from sam_engine.model import build_sam
model = build_sam("tiny_conv", seed=0).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
gen = torch.Generator().manual_seed(0)
x = torch.rand(batch, 3, 256, 256, generator=gen) * 255
coords = torch.rand(16, 2, 2, generator=gen) * 256
labels = torch.tensor([[1, 0]]).expand(16, 2)
index = torch.arange(batch).repeat_interleave(16 // batch)
def step():
    emb = model.image_encoder(model.preprocess(x))
    low, iou = model.decode(emb[index], coords, labels, multimask_output=True)
    (low.square().mean() + iou.square().mean()).backward()
    opt.step(); opt.zero_grad()
step()
t = time.perf_counter()
for _ in range(steps):
    step()
print((time.perf_counter() - t) / steps)
"""


def _spawn(threads: int, steps: int, batch: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return subprocess.Popen(
        [sys.executable, "-c", _WORKLOAD, str(threads), str(steps), str(batch)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _seconds(procs: list[subprocess.Popen]) -> float:
    return max(float(p.communicate()[0].strip().splitlines()[-1]) for p in procs)


def run(quick: bool = False) -> list[dict]:
    from sam_engine.threads import torch_threads

    steps, batch = (1, 1) if quick else (12, 4)  # batch: images per step (16 prompts in all)
    cores = os.cpu_count() or 1
    alone = _seconds([_spawn(cores, steps, batch)])
    policy = _seconds([_spawn(torch_threads(concurrent=2), steps, batch) for _ in range(2)])
    default = _seconds([_spawn(0, steps, batch) for _ in range(2)])
    row = {"benchmark": BENCH, "unit": "s/step", "baseline": round(alone, 4)}
    return [
        {**row, "metric": f"1 process, {cores} threads", "value": round(alone, 4), "ratio": 1.0},
        {
            **row,
            "metric": f"2 processes, {torch_threads(concurrent=2)} thread(s) each (engine policy)",
            "value": round(policy, 4),
            "ratio": round(policy / alone, 4),
        },
        {
            **row,
            "metric": "2 processes, torch default threads each",
            "value": round(default, 4),
            "ratio": round(default / alone, 4),
        },
    ]


if __name__ == "__main__":
    from benchmarks.run_all import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
