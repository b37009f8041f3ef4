"""Data-layer benchmark: recording speed, disk per step, loading speed and memory; prints a table.

    python tests/bench_data.py                     # 300,000 steps into /tmp/bench_data, deleted afterwards
    python tests/bench_data.py --steps 20000       # quicker; 300k times are then extrapolated

Recording runs in worker processes, so "CPU steps/s" (steps per CPU-second of the workers) says what
the code costs whatever else the machine runs; wall-clock figures depend on the machine's load,
printed first. Gathers run in a fresh process so its peak RSS (VmHWM) is the data layer's own.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import peak_rss_mb  # noqa: E402
from data.d4rl_frames import load_source, rally_stats, record, record_dataset  # noqa: E402


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed_recording(steps: int, num_envs: int, out: Path) -> tuple[float, float]:
    """(wall seconds, worker CPU seconds) of record_dataset."""
    shutil.rmtree(out, ignore_errors=True)
    cpu, t = children_cpu(), time.perf_counter()
    record_dataset("Pong", steps, out, seed=0, num_envs=num_envs, progress=False)
    return time.perf_counter() - t, children_cpu() - cpu


def gather(folder: str, batches: int, memmap: bool) -> None:
    """Child process: random (K=4 context, action, next frame) samples, batches of 128, like training."""
    import torch
    d = load_source(folder, verify=False)
    if memmap:  # for comparison: the same gathers through np.memmap views of the shard files
        maps = [np.load(p, mmap_mode="r") for p in d.frames.paths]
        offsets = np.cumsum([0] + [len(m) for m in maps])
    starts = d.starts(5)
    rng = np.random.default_rng(0)
    rss0, t, n = peak_rss_mb(), time.perf_counter(), 0
    for _ in range(batches):
        idx = starts[rng.integers(len(starts), size=128)][:, None] + np.arange(5)      # (B, 5)
        if memmap:
            part = np.searchsorted(offsets, idx, "right") - 1
            x = np.empty((*idx.shape, 84, 84), np.uint8)
            for p in np.unique(part):
                x[part == p] = maps[p][idx[part == p] - offsets[p]]
        else:
            x = d.frames[idx]                                                             # (B, 5, 84, 84)
        batch = (torch.from_numpy(x[:, :4]), torch.from_numpy(x[:, 4]),                  # (B, 4, 84, 84), (B, 84, 84)
                 torch.from_numpy(d.actions[idx[:, 3]]))                                  # (B,) action at the last context frame
        n += len(batch[0])
    dt = time.perf_counter() - t
    print(f"{n / dt:.0f} {rss0:.0f} {peak_rss_mb():.0f}")


def run_gather(folder: Path, batches: int, memmap: bool) -> tuple[float, float, float]:
    out = subprocess.run([sys.executable, __file__, "--gather", str(folder), "--batches", str(batches)]
                         + (["--memmap"] if memmap else []), capture_output=True, text=True, check=True).stdout
    rate, rss0, rss = out.split()[-3:]
    return float(rate), float(rss0), float(rss)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300_000, help="steps recorded with 2 environments")
    ap.add_argument("--one_env_steps", type=int, default=10_000)
    ap.add_argument("--dir", default="/tmp/bench_data")
    ap.add_argument("--keep", action="store_true", help="keep the recorded dataset")
    ap.add_argument("--gather", help=argparse.SUPPRESS)
    ap.add_argument("--batches", type=int, default=1000, help="gather batches of 128 samples")
    ap.add_argument("--memmap", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.gather:
        return gather(a.gather, a.batches, a.memmap)
    root = Path(a.dir)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (figures are measured under it)")
    rows = []
    for envs, steps in ((1, a.one_env_steps), (2, a.steps)):
        wall, cpu = timed_recording(steps, envs, root / f"pong_{envs}")
        rows.append((f"record Pong, {envs} env{'s' * (envs > 1)}, {steps} steps",
                     f"{steps / wall:,.0f} steps/s wall, {steps / cpu:,.0f} steps per worker CPU-s; "
                     f"300k steps: {300_000 / (steps / wall):.0f} s{' (measured)' if steps == 300_000 else ' (extrapolated)'}"))
    ds = root / "pong_2"
    size = sum(f.stat().st_size for f in ds.iterdir())
    rows.append(("disk", f"{size / a.steps:,.0f} bytes per step ({size / 1e9:.2f} GB for {a.steps} steps, manifest included)"))
    for verify in (True, False):
        t = time.perf_counter()
        load_source(str(ds), verify=verify)
        rows.append((f"load_source(verify={verify})", f"{time.perf_counter() - t:.2f} s"))
    batches = max(a.batches, a.steps // 128)
    rate, rss0, rss = run_gather(ds, batches, memmap=False)
    rows.append(("gather (4 context + next frame + action), DiskFrames",
                 f"{rate:,.0f} samples/s; peak RSS {rss:.0f} MB ({rss0:.0f} MB before gathering, torch imported; "
                 f"{batches * 128 * 5:,} frames read)"))
    rate, rss0, rss = run_gather(ds, batches, memmap=True)
    rows.append(("same gathers through np.memmap", f"{rate:,.0f} samples/s; peak RSS {rss:.0f} MB"))
    for policy in ("random", "tracker"):
        r = rally_stats(record("Pong", 5000, seed=0, policy=policy))
        rows.append((f"Pong {policy} policy, 5000 steps", f"{r['points']} points ({r['won']} won), "
                     f"{r['steps_per_point']:.0f} steps per point, ball returned {r['returns']} times "
                     f"({r['returns_per_point']:.2f} per point)"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
