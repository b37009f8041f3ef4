"""Speed, memory and dream figures of the default pipeline: python tests/benchmark.py [overrides...]

1. Runs `python world_model.py` (defaults, then the overrides) in a fresh process per training seed
   (train.seed 0, 1, 2), exactly as a user would, data recording included: wall time, peak memory
   (RSS) and the time of each phase.
2. Measures each trained model with the eval command's machinery (evaluate.measure) on held-out play
   recorded with seeds that no run and no choice of recipe ever looked at: random play (seeds
   401-403) and tracker play (411-413), 1,000 frames each.
3. Prints the speed table and the figures table (mean and worst over the training seeds, next to
   copy-last-frame and constant velocity), then `python world_model.py eval`'s wall time and play's
   milliseconds per step. Figures go in the README; targets are not asserted.

    python tests/benchmark.py                        # the default recipe, 3 training seeds (~12 min on 2 cores)
    python tests/benchmark.py --train-seeds 0        # one seed
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ae_step_gflop(cfg) -> float:
    """FLOPs of one autoencoder training step (forward + backward) at the configured batch size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    import world_model as W
    wm = W.WorldModel(cfg, 6)
    x = torch.randint(0, 255, (cfg.ae.batch_size, 84, 84), dtype=torch.uint8)
    labels = torch.full((cfg.ae.batch_size, 7), 40.0)
    with FlopCounterMode(display=False) as fc:
        W.ae_loss(wm.ae, x, labels, cfg.ae)[0].backward()
    return fc.get_total_flops() / 1e9


def train(overrides: list[str], seed: int, out: Path) -> dict:
    """The default command in a fresh process; returns its summary.json with wall time and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    cmd = [sys.executable, str(ROOT / "world_model.py"), *overrides, f"train.seed={seed}",
           f"experiment.out_dir={out}/runs", f"experiment.assets_dir={out}/assets"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far
    (run,) = Path(out, "runs").iterdir()
    s = json.loads((run / "summary.json").read_text())
    # Loop 2's process beside loop 1 lives while loop 1 trains, the step table's recording from then until loop 2
    # ends: all peaks count, summed (the rusage above is the largest).
    mine = max(s["peak_rss_mb_by_phase_end"].get(k, 0) for k in ("autoencoder", "predictor", "eval+assets"))
    both = mine + sum(s["peak_rss_mb_by_phase_end"].get(k, 0) for k in ("beside", "table"))
    return s | {"wall_s": wall, "peak_mb": max(both, peak / 1024 if peak > before else 0.0), "run": str(run)}


def figures(wm, data) -> dict:
    """The figures issue 14 names, on one held-out set."""
    import evaluate as E
    from world_model import HeldoutConfig
    cfg = HeldoutConfig(horizon=50, starts=96, long_starts=0, videos=0, probe_frames=0, ssim=False, dreams=16,
                        dream_steps=200)
    m, curves, _ = E.measure(wm, data, cfg)
    ol, dm, r = m["open_loop"], m["dream"], m["reconstruction"]
    return {
        "recon_ball": r["ball"], "recon_player": r["player"], "recon_opponent": r["opponent"],
        **{f"step1_{k}": ol[k]["ball_ok"]["1"] for k in ("model", "copy_last", "const_velocity")},
        **{f"step1_all_{k}": m["one_step"][b] for k, b in (("model", "ball"), ("copy_last", "copy_last_ball"),
                                                           ("const_velocity", "const_velocity_ball"))},
        **{f"track_{k}": ol[k]["ball_tracking_horizon_median"] for k in ("model", "copy_last", "const_velocity")},
        **{f"track4_{k}": ol[k]["ball_tracking_horizon_median_4px"] for k in ("model", "copy_last", "const_velocity")},
        **{f"copy_beats_{k}": len(v) for k, v in ol["copy_last_beats_model_objects_at"].items()},
        "dream_ball": dm["model"]["ball"], "real_ball": dm["real"]["ball"], "dream_moves": dm["model"]["ball_moves"],
        "dream_paddles": dm["model"]["paddles_intact"], "real_paddles": dm["real"]["paddles_intact"],
        "dream_follows": dm["model"]["opponent_follows"], "real_follows": dm["real"]["opponent_follows"],
        "up_at_top": dm["obeys"]["up_at_top"], "down_at_bottom": dm["obeys"]["down_at_bottom"],
    }


def held_out(policy: str, seeds: list[int]):
    from data.d4rl_frames import concat, record_sets
    return concat(record_sets([("Pong", 1000, s, policy) for s in seeds]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-seeds", default="0,1,2")
    ap.add_argument("--random-seeds", default="401,402,403", help="held-out random play (never used to choose)")
    ap.add_argument("--tracker-seeds", default="411,412,413", help="held-out tracker play (never used to choose)")
    ap.add_argument("--keep", help="write the runs, assets and the eval folder here instead of a temporary folder")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    import torch
    import world_model as W
    from play import bench_play
    cfg = W.make_config(a.overrides)
    sets = {"random": held_out("random", [int(s) for s in a.random_seeds.split(",")]),
            "tracker": held_out("tracker", [int(s) for s in a.tracker_seeds.split(",")])}
    runs, figs = [], {k: [] for k in sets}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = a.keep or tmp
        for seed in (int(s) for s in a.train_seeds.split(",")):
            runs.append(train(a.overrides, seed, Path(tmp) / f"s{seed}"))
            wm = W.WorldModel.load(Path(runs[-1]["run"]) / "checkpoints" / "last.pt")
            for k, d in sets.items():
                figs[k].append(figures(wm, d))
            print(f"train.seed={seed}: {runs[-1]['wall_s']:.1f} s wall", file=sys.stderr)
        best = Path(runs[0]["run"]) / "checkpoints" / "best.pt"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "world_model.py"), "eval", "--checkpoint", str(best),
                        f"experiment.out_dir={tmp}/eval"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        eval_wall = time.perf_counter() - t0
        play = bench_play(W.WorldModel.load(best))

    def spread(xs, fmt="{:.1f}"):
        return ", ".join(fmt.format(x) for x in xs)
    t = [r["times_s"] for r in runs]
    rows = [("record frames (train + held-out)", spread([x["data"] for x in t]) + " s"),
            (f"autoencoder, {cfg.ae.steps} steps of {cfg.ae.batch_size}" + (f" (predictor's first {cfg.pred.steps} steps beside it)"
             if "beside" in runs[0]["peak_rss_mb_by_phase_end"] else ""), spread([x["autoencoder"] for x in t]) + " s"),
            ("predictor after that: the rest of its first phase, encoding, "
             f"{cfg.tune.steps} tuning steps of {cfg.pred.batch_size}" + (" (the step table's frames recorded beside it)"
             if "table" in runs[0]["peak_rss_mb_by_phase_end"] else ""), spread([x["predictor"] for x in t]) + " s"),
            ("evaluation + assets", spread([x["eval+assets"] for x in t]) + " s"),
            ("whole command, wall (Python start to exit)", spread([r["wall_s"] for r in runs]) + " s"),
            ("peak memory (max RSS; with processes beside it: the sum of their peaks)", spread([r["peak_mb"] for r in runs], "{:.0f}") + " MB"),
            (f"autoencoder step cost, batch {cfg.ae.batch_size}", f"{ae_step_gflop(cfg):.2f} GFLOP"),
            ("python world_model.py eval (best.pt), wall", f"{eval_wall:.1f} s"),
            ("play: one step (predict + decode), median", f"{play['step_ms']:.1f} ms"),
            ("play: step + real game + draw (notebook PNG), median / p90", f"{play['total_ms']:.1f} / {play['total_p90_ms']:.1f} ms")]
    print(f"| {'python world_model.py ' + ' '.join(a.overrides) + ' (train.seed ' + a.train_seeds + ')':<66} "
          f"| torch {torch.__version__}, {torch.get_num_threads()} threads |")
    print(f"|{'-' * 68}|{'-' * 32}|")
    for k, v in rows:
        print(f"| {k:<66} | {v:<30} |")
    print(f"\nheld-out sets: random {[len(sets['random'].episode_slices())]} episodes, tracker "
          f"{[len(sets['tracker'].episode_slices())]} episodes, {len(sets['random'])} + {len(sets['tracker'])} frames")

    def mw(k, policy, pct=True, worst=min):
        xs = [f[k] for f in figs[policy]]
        f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.3g}")
        return f"{f(float(np.mean(xs)))} ({f(worst(xs))})"
    table = [
        ("reconstruction: ball kept %", "recon_ball", True, min, None),
        ("reconstruction: player paddle within 1 px %", "recon_player", True, min, None),
        ("reconstruction: opponent paddle within 1 px %", "recon_opponent", True, min, None),
        ("open loop: ball right at step 1 % (copy-last, const-vel)", "step1_model", True, min, ("step1_copy_last", "step1_const_velocity")),
        ("the same, every window of the set (~3,000) % (copy-last, const-vel)", "step1_all_model", True, min,
         ("step1_all_copy_last", "step1_all_const_velocity")),
        ("open loop: ball tracked, median steps, 2 px (copy-last, const-vel)", "track_model", False, min,
         ("track_copy_last", "track_const_velocity")),
        ("open loop: same, 4 px", "track4_model", False, min, ("track4_copy_last", "track4_const_velocity")),
        ("horizons 1-50 where copy-last keeps the ball more often", "copy_beats_ball", False, max, None),
        ("... the player paddle", "copy_beats_player", False, max, None),
        ("... the opponent paddle", "copy_beats_opponent", False, max, None),
        ("dream, 200 random actions: frames with a ball % (real)", "dream_ball", True, min, ("real_ball",)),
        ("dream: ball moving, % of steps with a ball in both frames", "dream_moves", True, min, None),
        ("dream: both paddles intact % (real)", "dream_paddles", True, min, ("real_paddles",)),
        ("dream: opponent row ~ ball row correlation (real)", "dream_follows", False, min, ("real_follows",)),
        ("dream fed only UP: player at the top wall, % of dreams", "up_at_top", True, min, None),
        ("dream fed only DOWN: player at the bottom wall, % of dreams", "down_at_bottom", True, min, None),
    ]
    print(f"\n| mean (worst) over train.seed {a.train_seeds} | random play {a.random_seeds} | tracker play {a.tracker_seeds} |")
    print("|---|---|---|")
    for label, key, pct, worst, ref in table:
        cells = []
        for policy in ("random", "tracker"):
            c = mw(key, policy, pct, worst)
            if ref:
                fmt = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.2g}")
                c += " (" + ", ".join(fmt(float(np.mean([f[r] for f in figs[policy]]))) for r in ref) + ")"
            cells.append(c)
        print(f"| {label} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
