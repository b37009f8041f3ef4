"""Speed and memory of the default pipeline: python tests/benchmark.py [overrides...]

Runs `python world_model.py` in a fresh process exactly as a user would (data recording
included), then prints a table: wall time per phase, total wall time, peak memory (RSS), the
autoencoder's cost per training step, and the held-out object figures, also on episodes of
seeds that no run or tuning ever saw; then `python world_model.py eval` on the trained checkpoint
(wall time, rollout speed) and the play session's milliseconds per step. Figures go in the README;
targets are not asserted.
"""
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def fresh_seed_figures(wm, cfg, seeds=(301, 302, 303), steps: int = 1000, policy: str | None = None,
                       dreams: bool = True) -> dict:
    """Object agreement of the trained model's reconstructions (and, with `dreams`, 30-step dreams)
    on episodes recorded with seeds never used in training or in choosing the recipe (which looked
    at seeds 1, 101-103, 111-112, 201-205); `policy`: another policy than training's (None: the same)."""
    import numpy as np
    import world_model as W
    from data.d4rl_frames import record
    data = [record(cfg.data.game, steps, sd, policy or cfg.data.policy) for sd in seeds]
    frames = np.concatenate([d.frames for d in data])
    ok = W.object_agreement(frames, wm.reconstruct(frames))
    out = {k: float(v.mean()) for k, v in ok.items()} | {"n": len(frames), "seeds": seeds}
    if dreams:   # the run's closing summary (evaluate.py's quick mode) on each seed, averaged over seeds
        import evaluate as E
        per_seed = [E.measure(wm, d, E.quick_config(cfg))[0]["open_loop"] for d in data]
        out["horizon"] = H = per_seed[0]["horizon"]
        for m in ("model", "copy_last"):
            for k in ("ball", "player", "opponent"):
                out[f"{m}_{k}"] = [float(np.mean([o[m][f"{k}_ok"][h] for o in per_seed])) for h in ("1", str(H))]
            out[f"{m}_tracked"] = float(np.mean([o[m]["ball_tracking_horizon_median"] for o in per_seed]))
    return out


def main() -> None:
    import world_model as W
    overrides = sys.argv[1:]
    cfg = W.make_config(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "world_model.py"), *overrides, f"experiment.out_dir={tmp}/runs",
               f"experiment.assets_dir={tmp}/assets"]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        (run,) = Path(tmp, "runs").iterdir()
        s = json.loads((run / "summary.json").read_text())
        wm = W.WorldModel.load(run / "checkpoints" / "last.pt")
        fresh = fresh_seed_figures(wm, cfg)
        other = "tracker" if cfg.data.policy != "tracker" else "random"
        fresh_other = fresh_seed_figures(wm, cfg, (311, 312), policy=other, dreams=False)
        # The evaluation command on this checkpoint, as a user runs it (fresh held-out recording included).
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "world_model.py"), "eval", "--checkpoint",
                        str(run / "checkpoints" / "best.pt"), f"experiment.out_dir={tmp}/eval"],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        eval_wall = time.perf_counter() - t0
        (ev,) = Path(tmp, "eval").iterdir()
        em = json.loads((ev / "metrics.json").read_text())
        from play import bench_play
        play = bench_play(wm)
    import torch
    t = s["times_s"]
    rows = [("record frames (train + held-out)", f"{t['data']:.1f} s"),
            (f"autoencoder, {cfg.ae.steps} steps", f"{t['autoencoder']:.1f} s ({1000 * t['autoencoder'] / cfg.ae.steps:.0f} ms/step)"),
            (f"predictor, {cfg.pred.steps} steps", f"{t['predictor']:.1f} s ({1000 * t['predictor'] / cfg.pred.steps:.0f} ms/step)"),
            ("evaluation + assets", f"{t['eval+assets']:.1f} s"),
            ("whole command, wall (Python start to exit)", f"{wall:.1f} s"),
            ("peak memory (max RSS)", f"{peak_mb:.0f} MB"),
            (f"autoencoder step cost, batch {cfg.ae.batch_size}", f"{ae_step_gflop(cfg):.2f} GFLOP"),
            ("held-out ball / player / opponent kept",
             " / ".join(f"{100 * s['reconstruction'][k]:.1f}" for k in ("ball", "player", "opponent")) + " %"),
            (f"same, fresh seeds {fresh['seeds']}, {fresh['n']} frames", f"{100 * fresh['ball']:.1f} / {100 * fresh['player']:.1f} / {100 * fresh['opponent']:.1f} %"),
            (f"same, {other} policy, seeds {fresh_other['seeds']}, {fresh_other['n']} frames",
             " / ".join(f"{100 * fresh_other[k]:.1f}" for k in ("ball", "player", "opponent")) + " %")]
    for m, label in (("model", "open loop"), ("copy_last", "copy-last-frame")):
        rows.append((f"{label}, fresh seeds: ball / player / opponent kept at h=1 | {fresh['horizon']}",
                     " | ".join(" / ".join(f"{100 * fresh[f'{m}_{k}'][i]:.1f}" for k in ("ball", "player", "opponent"))
                                for i in (0, 1)) + " %"))
        rows.append((f"{label}, fresh seeds: ball tracked (seed medians, mean)", f"{fresh[m + '_tracked']:.1f} steps"))
    sp = em["speed"]
    rows += [("python world_model.py eval (best.pt), wall", f"{eval_wall:.1f} s"),
             ("eval rollouts: batched / single stream", f"{sp['rollout_fps_batched']:.0f} / {sp['rollout_fps_single']:.0f} frames/s"),
             ("play: one step (predict + decode), median", f"{play['step_ms']:.1f} ms"),
             ("play: step + real game + draw (notebook PNG), median / p90",
              f"{play['total_ms']:.1f} / {play['total_p90_ms']:.1f} ms")]
    print(f"| {'python world_model.py ' + ' '.join(overrides):<60} | torch {torch.__version__}, {torch.get_num_threads()} threads |")
    print(f"|{'-' * 62}|{'-' * 32}|")
    for k, v in rows:
        print(f"| {k:<60} | {v:<30} |")


if __name__ == "__main__":
    main()
