"""Evaluation: how well does a trained world model dream Pong, measured against the real game?

One path for every figure: `measure` runs open-loop rollouts from real contexts next to the
copy-last-frame and zero-action baselines, reconstruction and one-step prediction, long rollouts
and dreams with random actions, all scored by the object probe (data/probe.py). The eval command
writes its files around it; the summary a training run prints at its end is its quick mode.

    python world_model.py eval                       # newest runs/*/checkpoints/best.pt, fresh held-out play
    python world_model.py eval --checkpoint PATH heldout.policy=random heldout.horizon=100

    import evaluate as E
    run_dir, metrics = E.eval_run("runs/<run>/checkpoints/best.pt")
"""
from __future__ import annotations

import csv
import json
import shutil
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from data import Parser, UsageError
from data.d4rl_frames import FrameData, record
from data.probe import (BALL_MOVES_PX, BALL_X_RANGE, BALL_Y_RANGE, DOWN, PLAYFIELD, UP, PADDLE_COLS, compare_probes, paddle_intact, probe, record_labelled,
                        validate_probe)
from outputs import evenly, json_safe, new_folder, panels, save_video, strip, which_checkpoint
from world_model import (Config, HeldoutConfig, WorldModel, encode_all, make_config, pixel_mse, squared_error,
                         to_uint8)

METHODS = ("model", "copy_last", "zero_action")
SUMMARY_HORIZONS = (1, 5, 10, 25, 50, 100, 200)   # those <= the rollout's horizon go in metrics.json
REAL_FRAMES = 20_000   # the real game's dream-plausibility figures: at most this many held-out frames, from the start

# ------------------------------------------------------------------------------------ inputs


def heldout_data(wm: WorldModel, cfg: HeldoutConfig) -> FrameData:
    """Freshly recorded episodes the model never trained on: another seed than its recordings."""
    d = wm.cfg.data
    if d.source == "ale" and set(cfg.policy.split("+")) & set(d.policy.split("+")) and cfg.seed in (d.seed, d.val_seed):
        raise UsageError(f"eval seed {cfg.seed} is one of the training recording's seeds ({d.seed}, {d.val_seed})")
    if d.source == "ale" and d.table_steps > 0 and "tracker" in cfg.policy.split("+") and cfg.seed == d.table_seed:
        raise UsageError(f"eval seed {cfg.seed} is the seed of the frames the ball's table was recorded from "
                         f"(data.table_seed): choose another heldout.seed")
    return record(wm.game, cfg.steps, cfg.seed, cfg.policy)


def spread_starts(data: FrameData, length: int, n: int) -> np.ndarray:
    """n window starts, evenly over all windows of `length` frames that stay inside one episode."""
    s = data.starts(length)
    if len(s) == 0:
        raise UsageError(f"no held-out episode holds {length} frames: record more (HeldoutConfig.steps)")
    return s[evenly(len(s), n)]


def memory_rows(data: FrameData, starts: np.ndarray, K: int, memory: int) -> tuple[np.ndarray, torch.Tensor]:
    """Frame indices of windows of K frames and the `memory` frames before each (S, memory + K), none before its
    episode's first frame (that frame repeated instead), and how many of them are real, counted from the last (S,)."""
    ep = np.asarray(data.episode)
    first = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
    begin = first[np.searchsorted(first, starts, side="right") - 1]           # (S,) the first frame of each one's episode
    idx = np.maximum(starts[:, None] + np.arange(-memory, K), begin[:, None])
    return idx, torch.from_numpy(K + np.minimum(memory, starts - begin))


def rollout_inputs(data: FrameData, starts: np.ndarray, K: int, horizon: int, zero_actions: bool = False,
                   memory: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Context uint8 (S, memory + K, 84, 84), actions (S, H), context actions (S, K - 1) of recorded windows, and how
    many context frames are real (S,): the `memory` frames before each window (WorldModel.start: where the ball went
    out) stop at its episode's first frame.

    The actions taken at the context frames are given (the model knows how the paddle was
    moving); zero_actions replaces every action by -1 (unknown), which the predictor sees as zeros.
    """
    idx = starts[:, None] + np.arange(K + horizon - 1)                        # (S, K + H - 1)
    acts = torch.from_numpy(np.asarray(data.actions, np.int64)[idx])          # (S, K + H - 1); -1 must fit
    if zero_actions:
        acts = torch.full_like(acts, -1)
    rows, valid = memory_rows(data, starts, K, memory)
    return torch.from_numpy(data.frames[rows]), acts[:, K - 1:], acts[:, :K - 1], valid


def rollouts(wm: WorldModel, context: torch.Tensor, actions: torch.Tensor, context_actions: torch.Tensor,
             valid: torch.Tensor | None = None, batch_frames: int = 3200, progress: bool = False) -> tuple[np.ndarray, float]:
    """wm.rollout_batch over as many starts at once as batch_frames allows: uint8 (S, H, 84, 84), seconds spent.
    `valid` (S,): real frames of each context (rollout_inputs), None: all."""
    S, H = actions.shape
    out, spent = np.empty((S, H, 84, 84), np.uint8), 0.0
    b = max(1, batch_frames // max(H, 1))
    for i in tqdm(range(0, S, b), desc="rollouts", disable=not progress, leave=False):
        t = time.perf_counter()
        more = {} if valid is None else {"valid": valid[i:i + b]}
        out[i:i + b] = to_uint8(wm.rollout_batch(context[i:i + b], actions[i:i + b], context_actions[i:i + b], **more))
        spent += time.perf_counter() - t
    return out, spent


def ssim_frames(real: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """scikit-image's SSIM per frame (7x7 window, data_range 255): uint8 (N, 84, 84) x 2 -> (N,).

    One call for the whole stack (frames as channels) is ~3x faster than a call per frame; the
    per-frame value is the mean of the SSIM map without its 3-pixel border, exactly what a call
    per frame returns (tests/test_eval.py checks).
    """
    from skimage.metrics import structural_similarity
    if len(real) == 0:
        return np.zeros(0)
    _, smap = structural_similarity(real, pred, data_range=255, channel_axis=0, full=True)  # (N, 84, 84)
    return smap[:, 3:-3, 3:-3].mean((1, 2))


def psnr(mse: np.ndarray) -> np.ndarray:
    """PSNR (dB) of a mean squared error on the 0..1 scale; copy-last on a still screen has MSE 0,
    so PSNR is taken of the mean MSE at each horizon, never averaged over frames (inf)."""
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-10))


def frame_and_object_metrics(real: np.ndarray, pred: np.ndarray, with_ssim: bool = True, chunk: int = 1024,
                             real_probe: dict[str, np.ndarray] | None = None, objects: bool = True
                             ) -> dict[str, np.ndarray]:
    """Per (rollout, step) figures: uint8 (S, H, 84, 84) x 2 -> dict of (S, H) arrays.

    mse (0..1 scale), ssim, and the probe's comparison: ball / player / opponent kept (bool),
    ball_4px (the ball rule at 4 px), <obj>_presence (bool), ball_err / player_err / opponent_err
    (pixels, NaN unless both have it).
    Chunks of frames bound the float copies (SSIM's map is float64). real_probe: probe() of the
    real frames, flattened to (S * H,), when it is at hand (several methods against the same frames).
    objects=False (a game without a probe): mse and ssim only.
    """
    S, H = real.shape[:2]
    r, p = real.reshape(-1, 84, 84), pred.reshape(-1, 84, 84)                 # (S * H, 84, 84)
    parts = []
    for i in range(0, len(r), chunk):
        a, b = r[i:i + chunk], p[i:i + chunk]
        out = {"mse": ((b.astype(np.float32) - a) ** 2).mean((1, 2)) / 255 ** 2}
        if with_ssim:
            out["ssim"] = ssim_frames(a, b)
        if objects:
            pa = probe(a) if real_probe is None else {k: v[i:i + chunk] for k, v in real_probe.items()}
            pb = probe(b)
            out |= compare_probes(pa, pb) | {"ball_4px": ball_kept(pa, pb, 4.0)}
        parts.append(out)
    return {k: np.concatenate([q[k] for q in parts]).reshape(S, H) for k in parts[0]}


def constant_velocity(context: np.ndarray, horizon: int) -> dict[str, np.ndarray]:
    """The physical baseline: the ball's probe position in the last context frame, moved on at its
    velocity since the frame before (0 if that one had no ball), reflected at the top and bottom walls
    (no paddles). uint8 (S, K, 84, 84) -> ball (S, H) bool (no ball if the last context frame has
    none, or once it leaves the columns where a ball is seen, BALL_X_RANGE), ball_x, ball_y (S, H), NaN
    without a ball."""
    S = len(context)
    p = probe(context[:, -2:].reshape(-1, 84, 84))
    x, y, have = (p[k].reshape(S, 2) for k in ("ball_x", "ball_y", "ball"))
    both = have.all(1)[:, None]
    t = np.arange(1, horizon + 1)[None]                                       # (1, H)
    bx = x[:, 1:] + t * np.where(both, x[:, 1:] - x[:, :1], 0.0)              # (S, H)
    lo, hi = BALL_Y_RANGE
    free = y[:, 1:] + t * np.where(both, y[:, 1:] - y[:, :1], 0.0) - lo      # unfolded, from the top wall
    m = np.mod(free, 2 * (hi - lo))
    by = lo + np.where(m > hi - lo, 2 * (hi - lo) - m, m)                     # mirrored at both walls
    ball = have[:, 1:] & (bx >= BALL_X_RANGE[0]) & (bx <= BALL_X_RANGE[1])  # where a real ball is seen
    return {"ball": ball, "ball_x": np.where(ball, bx, np.nan), "ball_y": np.where(ball, by, np.nan)}


def ball_kept(real: dict[str, np.ndarray], pred: dict[str, np.ndarray], px: float) -> np.ndarray:
    """The ball rule at any tolerance: present in both within px (centroid distance), or absent in both."""
    dist = np.hypot(real["ball_x"] - pred["ball_x"], real["ball_y"] - pred["ball_y"])
    return np.where(real["ball"], pred["ball"] & (dist <= px), ~pred["ball"])


def tracking_horizon(ball_ok: np.ndarray) -> np.ndarray:
    """Steps for which each rollout keeps the ball from the start: bool (S, H) -> int (S,) in [0, H].

    The first step at which the ball is missing, spurious or > 2 px off is step T + 1; a rollout
    that never loses it scores H.
    """
    return np.argmin(np.concatenate([ball_ok, np.zeros((len(ball_ok), 1), bool)], 1), 1)


def per_horizon(m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(S, H) figures -> (H,) curves, the CSV's columns for one method."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # a step where no rollout has both balls: NaN
        mse = m["mse"].mean(0)
        curves = {"mse": mse, "psnr": psnr(mse)}
        if "ssim" in m:
            curves["ssim"] = m["ssim"].mean(0)
        if "ball" not in m:                                   # pixels only (a game without a probe)
            return curves
        curves["ball_present_agreement"] = m["ball_presence"].mean(0)
        curves["ball_ok"] = m["ball"].mean(0)
        curves["ball_pos_err"] = np.nanmean(m["ball_err"], 0)
        curves["ball_pos_n"] = np.isfinite(m["ball_err"]).sum(0)      # rollouts behind ball_pos_err
        H = m["ball"].shape[1]
        curves["ball_tracked_share"] = (tracking_horizon(m["ball"])[:, None] >= np.arange(1, H + 1)).mean(0)
        for k in ("player", "opponent"):
            curves[k + "_err"] = np.nanmean(m[k + "_err"], 0)
            curves[k + "_ok"] = m[k].mean(0)
    return curves


def plausibility(frames: np.ndarray, same_episode: np.ndarray) -> dict[str, float]:
    """Is this Pong at all? uint8 (N, 84, 84) frames, same_episode bool (N - 1,): frame t + 1 follows t.

    ball: share of frames with a ball; ball_moves: share of consecutive pairs, both with a ball, in
    which it moved >= BALL_MOVES_PX; <paddle>_intact: share of frames where the paddle shows a
    plausible block (data.probe.paddle_intact); opponent_follows: correlation of the opponent
    paddle's row with the ball's on frames showing both.
    """
    p = probe(frames)
    both = p["ball"][:-1] & p["ball"][1:] & same_episode
    step = np.hypot(np.diff(p["ball_x"]), np.diff(p["ball_y"]))
    out = {"ball": float(p["ball"].mean()),
           "ball_moves": float((step[both] >= BALL_MOVES_PX).mean()) if both.any() else float("nan")}
    # Pong's opponent chases the ball: its paddle's row correlates with the ball's.
    seen = p["ball"] & p["opponent"]
    out["opponent_follows"] = float(np.corrcoef(p["ball_y"][seen], p["opponent_y"][seen])[0, 1]) \
        if seen.sum() > 2 and np.ptp(p["ball_y"][seen]) > 0 and np.ptp(p["opponent_y"][seen]) > 0 else float("nan")
    intact = {k: paddle_intact(p, k) for k in ("player", "opponent")}
    return out | {k + "_intact": float(v.mean()) for k, v in intact.items()} | {
        "paddles_intact": float((intact["player"] & intact["opponent"]).mean())}


def reconstruction_figures(frames: np.ndarray, recon: np.ndarray, objects: bool = True) -> dict[str, float]:
    """Pixel MSE and object agreement of reconstructions of real uint8 (N, 84, 84) frames."""
    return _figures_of([_chunk_stats(frames, recon, objects)], objects)


def _chunk_stats(frames: np.ndarray, recon: np.ndarray, objects: bool) -> dict[str, np.ndarray | float]:
    """What reconstruction_figures needs of one chunk: summed squared error, pixels, per-frame agreement."""
    out = {"sq": squared_error(recon, frames), "pixels": frames.size}
    if objects:
        pr = probe(frames)
        out |= {"has_ball": pr["ball"], **compare_probes(pr, probe(recon))}
    return out


def _figures_of(parts: list[dict], objects: bool) -> dict[str, float]:
    """Chunks' statistics -> the figures of all their frames (the MSE as pixel_mse sums it)."""
    out = {"mse": sum(p["sq"] for p in parts) / max(sum(p["pixels"] for p in parts), 1) / 255 ** 2}
    if not objects:
        return out
    cat = {k: np.concatenate([p[k] for p in parts]) for k in ("has_ball", "ball", "player", "opponent")}
    has = cat["has_ball"]
    return out | {"ball_on_frames_with_ball": float(cat["ball"][has].mean()) if has.any() else float("nan"),
                  **{k: float(cat[k].mean()) for k in ("ball", "player", "opponent")}}


@torch.no_grad()
def reconstruction_and_one_step(wm: WorldModel, data: FrameData, max_windows: int = 4096,
                                batch: int = 512, chunk: int = 4096, memory: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """Reconstruction of every held-out frame, and teacher-forced one-step prediction: frame t + K
    from the K real frames before it and their actions.

    Every frame is encoded once; the predictor runs on windows of latents: the same numbers as
    wm.reconstruct and rollout_batch with H = 1, without encoding each frame K + 1 times. Frames are
    read and reconstructed `chunk` at a time: memory does not grow with the held-out set (but for
    the latents, 512 bytes a frame).
    """
    wm.eval()
    K, n = wm.context, len(data)
    z = encode_all(wm, data.frames, batch)                                     # (N, D), frames read in batches
    parts = []
    for i in range(0, n, chunk):
        frames = np.asarray(data.frames[i:i + chunk])                          # (chunk, 84, 84)
        recon = np.concatenate([to_uint8(wm.ae.decode(z[j:min(j + batch, i + chunk, n)]))
                                for j in range(i, min(i + chunk, n), batch)])
        parts.append(_chunk_stats(frames, recon, wm.objects))
    rec = {"frames": n} | _figures_of(parts, wm.objects)
    mse = pixel_mse
    s = data.starts(K + 1)
    if len(s) == 0:
        return rec, {"windows": 0}
    s = s[evenly(len(s), max_windows)]
    acts = torch.from_numpy(np.asarray(data.actions, np.int64)).to(wm.device)
    rows, valid = memory_rows(data, s, K, memory)                              # (W, memory + K), (W,)
    rows, idx = torch.from_numpy(rows), torch.from_numpy(s[:, None] + np.arange(K))   # (W, K): their actions
    pred = np.concatenate([to_uint8(wm.dream_step(wm.start(z[r], valid=v), acts[j])[1])
                           for r, v, j in zip(rows.split(batch), valid.split(batch), idx.split(batch))])
    real, last = data.frames[s + K], data.frames[s + K - 1]
    one = {"windows": len(s), "mse": mse(pred, real), "copy_last_mse": mse(last, real)}
    if wm.objects:   # the real frames probed once; the ball's baselines on the same windows (open_loop: fewer)
        rp = probe(real)
        ok = compare_probes(rp, probe(pred))
        one |= {k: float(ok[k].mean()) for k in ("ball", *PADDLE_COLS)}
        one["copy_last_ball"] = float(compare_probes(rp, probe(last))["ball"].mean())
        cv = constant_velocity(data.frames[s[:, None] + np.arange(K)], 1)
        one["const_velocity_ball"] = float(ball_kept({k: v[:, None] for k, v in rp.items()}, cv, 2.0).mean())
    return rec, one

# ------------------------------------------------------------------------------------ the measurement


def _at(curve: np.ndarray, horizons=SUMMARY_HORIZONS) -> dict[str, float]:
    """The curve at the summary horizons it reaches, and at its last step."""
    return {str(h): float(curve[h - 1]) for h in sorted({*horizons, len(curve)}) if 1 <= h <= len(curve)}


def open_loop(wm: WorldModel, data: FrameData, cfg: HeldoutConfig, progress: bool = False) -> tuple[dict, dict, float]:
    """cfg.starts rollouts of cfg.horizon steps from K real frames with the recorded actions, against
    the real continuation, next to copy-last-frame and the model with its actions zeroed (same starts).
    Returns the summary dict, the per-horizon curves of each method and the seconds spent rolling out."""
    K, H = wm.context, cfg.horizon
    starts = spread_starts(data, K + H, cfg.starts)
    real = data.frames[starts[:, None] + np.arange(K, K + H)]                  # (S, H, 84, 84)
    # Model and zero-action starts in one batch: fewer, larger calls run faster on a CPU.
    ins = [torch.cat(x) for x in zip(rollout_inputs(data, starts, K, H, memory=cfg.memory),
                                     rollout_inputs(data, starts, K, H, True, cfg.memory))]
    both, spent = rollouts(wm, *ins, batch_frames=cfg.batch_frames, progress=progress)
    model, zero = both[:len(starts)], both[len(starts):]
    preds = {"model": model, "copy_last": np.repeat(data.frames[starts + K - 1][:, None], H, 1), "zero_action": zero}
    real_p = probe(real.reshape(-1, 84, 84)) if wm.objects else None        # (S * H,) each, probed once
    per_step = {k: frame_and_object_metrics(real, v, cfg.ssim, real_probe=real_p, objects=wm.objects)
                for k, v in preds.items()}
    curves = {k: per_horizon(v) for k, v in per_step.items()}
    ol = {"horizon": H, "rollouts": len(starts), "episodes": len(np.unique(np.asarray(data.episode)[starts]))}
    worse = np.flatnonzero(curves["copy_last"]["mse"] < curves["model"]["mse"]) + 1
    ol["copy_last_beats_model_mse_at"] = [int(h) for h in worse]    # worse than doing nothing, on MSE
    ol["actions_change_prediction"] = bool((model != zero).any())
    if not wm.objects:                                              # pixels only: no probe for this game
        for k, c in curves.items():
            ol[k] = {f: _at(c[f]) for f in ("mse", "psnr", "ssim") if f in c} | {"mse_mean": float(c["mse"].mean())}
        return ol, curves, spent
    for k, ps in per_step.items():
        c, th = curves[k], tracking_horizon(ps["ball"])
        ol[k] = {f: _at(c[f]) for f in ("mse", "psnr", "ssim", "ball_ok", "player_ok", "opponent_ok") if f in c}
        ol[k] |= {"mse_mean": float(c["mse"].mean()), "ball_tracking_horizon_median": float(np.median(th)),
                  "ball_tracking_horizon_mean": float(th.mean()),
                  "ball_tracking_horizon_median_4px": float(np.median(tracking_horizon(ps["ball_4px"])))}
    # The physical reference for the ball alone: constant velocity from the last two context frames.
    cv_pred = constant_velocity(data.frames[starts[:, None] + np.arange(K)], H)
    real_p = {k: v.reshape(len(starts), H) for k, v in real_p.items()}
    cv = {px: ball_kept(real_p, cv_pred, px) for px in (2.0, 4.0)}
    ol["const_velocity"] = {"ball_ok": _at(cv[2.0].mean(0)),
                            "ball_tracking_horizon_median": float(np.median(tracking_horizon(cv[2.0]))),
                            "ball_tracking_horizon_mean": float(tracking_horizon(cv[2.0]).mean()),
                            "ball_tracking_horizon_median_4px": float(np.median(tracking_horizon(cv[4.0])))}
    # Worse than doing nothing on the objects: horizons where copying the last frame keeps an object more often.
    ol["copy_last_beats_model_objects_at"] = {
        k: [int(h) for h in np.flatnonzero(curves["copy_last"][f"{k}_ok"] > curves["model"][f"{k}_ok"]) + 1]
        for k in ("ball", "player", "opponent")}
    return ol, curves, spent


def long_rollouts_and_dreams(wm: WorldModel, data: FrameData, cfg: HeldoutConfig, out_dir: Path | None = None
                             ) -> tuple[dict, float, np.ndarray]:
    """Long rollouts (how long the ball survives; videos into out_dir) and dreams with random actions
    (no ground truth: plausibility only, next to real frames). Returns metrics, single-stream fps and
    the dreams, uint8 (D, T, 84, 84)."""
    K, L, T = wm.context, cfg.long_horizon, cfg.dream_steps
    ls = spread_starts(data, K + L, cfg.long_starts) if cfg.long_starts > 0 and len(data.starts(K + L)) else \
        np.zeros(0, np.int64)
    ds = spread_starts(data, K, cfg.dreams)
    dream_in = list(rollout_inputs(data, ds, K, 1, memory=cfg.memory))
    dream_in[1] = torch.from_numpy(np.random.default_rng(cfg.seed).integers(0, wm.num_actions, (len(ds), T)))
    long_in = rollout_inputs(data, ls, K, L, memory=cfg.memory)
    if L == T:   # one batch: fewer, larger calls run faster on a CPU
        both = rollouts(wm, *[torch.cat(x) for x in zip(long_in, dream_in)], batch_frames=cfg.batch_frames)[0]
        lmodel, dream = both[:len(ls)], both[len(ls):]
    else:
        lmodel, dream = (rollouts(wm, *x, batch_frames=cfg.batch_frames)[0] for x in (long_in, dream_in))
    m, single = {"long": {"skipped": f"no held-out episode holds {K + L} frames" if cfg.long_starts else "off"},
                 "videos": []}, float("nan")
    if len(ls):
        lreal = data.frames[ls[:, None] + np.arange(K, K + L)]                 # (S, L, 84, 84)
        m["long"] = {"horizon": L, "rollouts": len(ls)}
        lreal_p = probe(lreal.reshape(-1, 84, 84)) if wm.objects else None
        for k, v in (("model", lmodel), ("copy_last", np.repeat(data.frames[ls + K - 1][:, None], L, 1))):
            f = frame_and_object_metrics(lreal, v, with_ssim=False, real_probe=lreal_p, objects=wm.objects)
            m["long"][k] = {"mse": _at(f["mse"].mean(0))}
            if wm.objects:
                m["long"][k] |= {"ball_ok": _at(f["ball"].mean(0)),
                                 "ball_tracking_horizon_median": float(np.median(tracking_horizon(f["ball"])))}
        for i in range(min(cfg.videos, len(ls)) if out_dir is not None else 0):
            n = cfg.video_steps
            video = panels([lreal[i, :n], lmodel[i, :n], difference(lreal[i, :n], lmodel[i, :n])],
                           ["real  step {t}", "model", "|difference|"])
            m["videos"] += save_video(video, out_dir / "videos" / f"rollout_{i}.gif", cfg.fps)
        # Single stream: the API a player uses, one start, one frame at a time.
        s = int(ls[0])
        t = time.perf_counter()
        wm.rollout(data.frames[s:s + K], data.actions[s + K - 1:s + K - 1 + L], data.actions[s:s + K - 1])
        single = L / (time.perf_counter() - t)
    same = np.ones(dream.shape[:2], bool)
    same[:, -1] = False                                                        # one dream does not follow another
    ep = np.asarray(data.episode)
    m["dream"] = {"steps": T, "dreams": len(ds), "actions": f"uniform random, seed {cfg.seed}"}
    if wm.objects:   # Pong: is it still Pong? (no ground truth; another game has no probe to ask)
        m["dream"] |= {"model": plausibility(dream.reshape(-1, 84, 84), same.ravel()[:-1]),
                       "real": plausibility(data.frames[:REAL_FRAMES], (ep[1:] == ep[:-1])[:REAL_FRAMES - 1])}
        m["dream"]["obeys"] = obeys_actions(wm, dream_in[0], dream_in[2], cfg, dream_in[3])
    return m, single, dream


def obeys_actions(wm: WorldModel, context: torch.Tensor, context_actions: torch.Tensor, cfg: HeldoutConfig,
                  valid: torch.Tensor | None = None) -> dict:
    """Pong: dreams fed only UP (only DOWN) from the same contexts must end with the player's paddle
    at the top (bottom) wall, as the real game does within ~10 steps. Shares of dreams whose paddle
    centre ends within 4 px of that wall, and the mean final centre rows. The end is the median centre
    of the last 5 frames: a ball that crosses the paddle's columns in a frame can make the probe read
    its blurred edge as paddle rows (2 of 96 dreams on development play, each in the very last frame)."""
    n, T, last = len(context), min(cfg.dream_steps, 60), 5
    acts = torch.cat([torch.full((n, T), UP), torch.full((n, T), DOWN)])
    tail = rollouts(wm, torch.cat([context, context]), acts, torch.cat([context_actions, context_actions]),
                    None if valid is None else torch.cat([valid, valid]), cfg.batch_frames)[0][:, -last:]   # (2n, 5, 84, 84)
    top, bottom = PLAYFIELD[0], PLAYFIELD[1] - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ends = np.nanmedian(probe(tail.reshape(-1, 84, 84))["player_y"].reshape(2 * n, -1), 1)   # (2n,) NaN: no paddle
        up, down = ends[:n], ends[n:]
        return {"steps": T, "up_at_top": float(np.mean(up <= top + 4)), "down_at_bottom": float(np.mean(down >= bottom - 4)),
                "up_end_y": float(np.nanmean(up)), "down_end_y": float(np.nanmean(down))}


def measure(wm: WorldModel, data: FrameData, cfg: HeldoutConfig, out_dir: Path | None = None,
            progress: bool = False) -> tuple[dict, dict, np.ndarray]:
    """Every figure of the evaluation on held-out `data`, as metrics.json holds them (videos into out_dir);
    also the per-horizon curves of each method and the dreams, uint8 (D, T, 84, 84)."""
    times, t0 = {}, time.perf_counter()
    wm.eval()
    m = {"game": wm.game, "context": wm.context, "eval_config": asdict(cfg)}
    t = time.perf_counter()
    m["open_loop"], curves, spent = open_loop(wm, data, cfg, progress)
    times["open_loop"] = time.perf_counter() - t
    t = time.perf_counter()
    long_and_dreams, single, dreams = long_rollouts_and_dreams(wm, data, cfg, out_dir)
    m |= long_and_dreams
    times["long_rollouts+dreams"] = time.perf_counter() - t
    t = time.perf_counter()
    m["reconstruction"], m["one_step"] = reconstruction_and_one_step(wm, data, memory=cfg.memory)
    times["reconstruction+one_step"] = time.perf_counter() - t
    if cfg.probe_frames > 0 and wm.game == "Pong":
        t = time.perf_counter()
        m["probe_vs_ram"] = validate_probe(*record_labelled(wm.game, cfg.probe_frames, cfg.seed + 1))
        times["probe_check"] = time.perf_counter() - t
    n = m["open_loop"]["rollouts"]
    m["speed"] = {"rollout_fps_batched": 2 * n * cfg.horizon / spent,
                  "batched_rollouts_at_once": min(2 * n, max(1, cfg.batch_frames // cfg.horizon)),
                  "rollout_fps_single": single, "torch_threads": torch.get_num_threads(), "device": str(wm.device)}
    worse = m["open_loop"]["copy_last_beats_model_mse_at"]
    m["warnings"] = [f"copy-last-frame beats the model on MSE at horizons {_ranges(worse)}"] if worse else []
    m["warnings"] += [f"copy-last-frame keeps the {k} more often than the model at horizons {_ranges(hs)}"
                      for k, hs in m["open_loop"].get("copy_last_beats_model_objects_at", {}).items() if hs]
    if not wm.objects:
        m["warnings"].append(f"{wm.game}: pixel figures only (object figures need a probe, which only Pong has)")
    m["times_s"] = times | {"measure": time.perf_counter() - t0}
    return m, curves, dreams


def quick_config(cfg: Config) -> HeldoutConfig:
    """The end-of-training summary: measure's settings with fewer, shorter rollouts and no SSIM,
    no long rollouts, no videos, no probe check (a few seconds on a CPU)."""
    return replace(cfg.heldout, horizon=cfg.eval.summary_horizon, starts=cfg.eval.summary_starts, ssim=False,
                   long_starts=0, videos=0, probe_frames=0)

# ------------------------------------------------------------------------------------ files and pictures


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| of uint8 frames, as uint8."""
    return np.abs(a.astype(np.int16) - b).astype(np.uint8)


def save_recon_png(real: np.ndarray, recon: np.ndarray, path: str | Path) -> None:
    """Real frames above their reconstructions, big enough to see the ball."""
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules:  # headless CLI; a notebook keeps its own backend
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(real)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.8), squeeze=False)
    for i in range(n):
        for row, (img, label) in enumerate([(real[i], "real"), (recon[i], "reconstruction")]):
            ax = axes[row, i]
            ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label)
    fig.suptitle("held-out frames: real (top) vs reconstruction (bottom)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(curves: dict[str, dict[str, np.ndarray]], n: int, episodes: int, out_dir: Path) -> None:
    """plots/mse_vs_horizon.png and plots/ball_vs_horizon.png, the baselines on the same starts."""
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules:   # headless CLI; a notebook keeps its own backend
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    style = {"model": ("model", "C0", "-"), "copy_last": ("copy last frame", "C1", "--"),
             "zero_action": ("model, actions zeroed", "C2", ":")}
    h = np.arange(1, len(curves["model"]["mse"]) + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m, (label, color, ls) in style.items():
        ax.plot(h, curves[m]["mse"], ls, color=color, label=label)
    ax.set_xlabel("prediction horizon (steps after the last real frame)")
    ax.set_ylabel("pixel MSE (0..1 scale)")
    ax.set_title(f"open-loop MSE vs horizon: {n} rollouts from {episodes} held-out episodes")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "mse_vs_horizon.png", dpi=110)
    plt.close(fig)
    if "ball_ok" not in curves["model"]:       # pixels only: no probe for this game
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for m, (label, color, ls) in style.items():
        err = np.where(curves[m]["ball_pos_n"] >= 3, curves[m]["ball_pos_err"], np.nan)   # a mean of < 3 is noise
        a1.plot(h, err, ls, color=color, label=label)
        a2.plot(h, curves[m]["ball_tracked_share"], ls, color=color, label=label)
    a1.set_ylabel("ball position error (px)")
    a1.set_title("where both frames have a ball (>= 3 rollouts)", fontsize=9)
    a2.set_ylabel("share of rollouts still tracking the ball")
    a2.set_ylim(-0.02, 1.02)
    for a in (a1, a2):
        a.set_xlabel("prediction horizon (steps)")
        a.grid(alpha=0.3)
        a.legend()
    fig.suptitle(f"ball vs horizon: {n} rollouts from {episodes} held-out episodes (tracked: no step yet "
                 f"with the ball missing, spurious or > 2 px off)")
    fig.tight_layout()
    fig.savefig(out_dir / "ball_vs_horizon.png", dpi=110)
    plt.close(fig)


def write_csv(curves: dict[str, dict[str, np.ndarray]], n: int, path: Path) -> None:
    """One row per horizon step h = 1..H; columns <method>_<figure>."""
    keys = list(curves["model"])
    cols = ["h", "rollouts"] + [f"{m}_{k}" for m in METHODS for k in keys]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for i in range(len(curves["model"]["mse"])):
            w.writerow([i + 1, n] + [f"{float(curves[m][k][i]):.6g}" for m in METHODS for k in keys])



def evaluate_checkpoint(wm: WorldModel, data: FrameData | None, out_dir: str | Path,
                        cfg: HeldoutConfig | None = None, progress: bool = True, checkpoint: str | None = None) -> dict:
    """The eval command's measurement, written to out_dir: metrics.json, metrics_by_horizon.csv, plots/, videos/.

    data: held-out episodes (None: recorded now with cfg.seed and cfg.policy); checkpoint: the file
    `wm` came from, recorded in metrics.json. Returns metrics.json's dict.
    """
    cfg = cfg or HeldoutConfig()
    if not wm.objects and "tracker" in cfg.policy.split("+"):    # the tracker plays Pong only
        cfg = replace(cfg, policy="random")
    t0 = time.perf_counter()
    recorded = data is None
    if recorded:
        data = heldout_data(wm, cfg)
    record_s = time.perf_counter() - t0
    out_dir = Path(out_dir)
    made = not out_dir.exists()
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    (out_dir / "videos").mkdir(exist_ok=True)
    try:
        m, curves, _ = measure(wm, data, cfg, out_dir, progress)
    except UsageError:
        if made:                 # never leave an empty or half-written eval folder behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    m["data"] = {"frames": len(data), "episodes": len(np.unique(np.asarray(data.episode))),
                 "source": f"recorded now: seed {cfg.seed}, policy {cfg.policy}" if recorded else "given"}
    write_csv(curves, m["open_loop"]["rollouts"], out_dir / "metrics_by_horizon.csv")
    plot_curves(curves, m["open_loop"]["rollouts"], m["open_loop"]["episodes"], out_dir / "plots")
    m["times_s"] |= {"record": record_s, "total": time.perf_counter() - t0}
    if checkpoint is not None:
        m["checkpoint"] = checkpoint
    (out_dir / "metrics.json").write_text(json.dumps(json_safe(m), indent=1, allow_nan=False))
    return m


def evaluate(cfg: Config, wm: WorldModel, val: FrameData, run_dir: str | Path | None = None) -> dict:
    """The end of a training run: measure's quick mode on the held-out split, and the pictures
    (real_vs_recon.png, <game>_fake.gif, dream_strip.png) into <run_dir>/assets/ and, when
    cfg.refreshes_assets(), into experiment.assets_dir. Returns the figures (summary.json holds them)."""
    m, _, _ = measure(wm, val, quick_config(cfg))
    folders = [Path(run_dir) / "assets"] if run_dir is not None else []
    if cfg.refreshes_assets():
        folders.append(Path(cfg.experiment.assets_dir))
    if folders:
        names = write_assets_of(cfg, wm, val, folders[0])
        for f in folders[1:]:
            f.mkdir(parents=True, exist_ok=True)
            for n in names:
                shutil.copyfile(folders[0] / n, f / n)
    m["pictures"] = [str(f) for f in folders]
    return m


def write_assets_of(cfg: Config, wm: WorldModel, val: FrameData, folder: Path) -> list[str]:
    """real_vs_recon.png: 8 held-out frames with a ball above their reconstructions; <game>_fake.gif:
    an eval.rollout_frames open-loop dream from the first long-enough held-out window, with the
    actions the player took there, beside the real game; dream_strip.png: its frames t = 0, 50, 100,
    ... and the last, real above dream."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(val.frames)
    has_ball = probe(frames)["ball"] if wm.objects else np.zeros(len(frames), bool)
    pick = np.flatnonzero(has_ball)
    pick = pick[evenly(len(pick), 8)] if len(pick) >= 8 else np.arange(min(8, len(val)))
    save_recon_png(frames[pick], wm.reconstruct(frames[pick]), folder / "real_vs_recon.png")
    K, H = wm.context, cfg.eval.rollout_frames
    s = val.starts(K + H)
    if len(s) == 0:
        raise UsageError(f"no held-out episode holds {K + H} frames: raise data.val_steps or lower eval.rollout_frames")
    s = int(s[0])
    dream = wm.rollout(frames[s:s + K], val.actions[s + K - 1:s + K - 1 + H], val.actions[s:s + K - 1])
    real = frames[s + K:s + K + H]
    names = ["real_vs_recon.png", f"{wm.game.lower()}_fake.gif", "dream_strip.png"]
    save_video(panels([real, dream], ["real  t={t}", "dream"]), folder / names[1],
               cfg.eval.fps, mp4=False)
    pick = np.unique(np.r_[np.arange(0, H, 50), H - 1])                        # t = 0, 50, 100, 150, 199
    import imageio.v3 as iio
    iio.imwrite(folder / "dream_strip.png", strip(real[pick], dream[pick]))
    return names


def eval_run(checkpoint: str | Path, out_dir: str | Path = "runs", data: FrameData | None = None,
             cfg: HeldoutConfig | None = None, progress: bool = True) -> tuple[Path, dict]:
    """`python world_model.py eval --checkpoint PATH`: runs/<timestamp>_<game>_eval/ with everything in it."""
    wm = WorldModel.load(checkpoint)
    run_dir = new_folder(out_dir, f"{wm.game.lower()}_eval")          # made now: two evals never share one
    try:
        m = evaluate_checkpoint(wm, data, run_dir, cfg, progress=progress, checkpoint=str(checkpoint))
    except UsageError:
        shutil.rmtree(run_dir, ignore_errors=True)                      # never an empty folder left behind
        raise
    if progress:
        print_eval_summary(m)
        print(f"run folder        {run_dir}")
    return run_dir, m

# ------------------------------------------------------------------------------------ printing


def _ranges(hs: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out, i = [], 0
    while i < len(hs):
        j = i
        while j + 1 < len(hs) and hs[j + 1] == hs[j] + 1:
            j += 1
        out.append(f"{hs[i]}" if i == j else f"{hs[i]}-{hs[j]}")
        i = j + 1
    return ", ".join(out)


def print_eval_summary(m: dict) -> None:
    """A fixed-format table: the model next to its baselines on the same held-out starts."""
    ol, d = m["open_loop"], m["data"]
    print(f"\nheld-out data     {d['frames']} frames, {d['episodes']} episodes ({d['source']})")
    print(f"open loop         {ol['rollouts']} rollouts x {ol['horizon']} steps from {ol['episodes']} episodes, "
          f"K = {m['context']} real context frames, recorded actions")
    objects = "const_velocity" in ol                 # False: a game without a probe, pixel figures only
    cols = (*METHODS, "const_velocity") if objects else METHODS
    print(f"{'':24s}" + "".join(f"{k:>15s}" for k in cols))
    for fig, fmt in (("mse", "{:15.5f}"), ("psnr", "{:15.2f}"), ("ssim", "{:15.3f}"), ("ball_ok", "{:15.1%}"),
                     ("player_ok", "{:15.1%}"), ("opponent_ok", "{:15.1%}")):
        for h in ol["model"].get(fig, {}):
            print(f"{fig + ' h=' + h:24s}" + "".join(fmt.format(ol[k][fig][h]) if fig in ol[k] else f"{'-':>15s}"
                                                   for k in cols))
    for key, label in (("", "2 px"), ("_4px", "4 px")) if objects else ():
        print(f"{'ball tracked, ' + label:24s}"
              + "".join(f"{ol[k]['ball_tracking_horizon_median' + key]:11.1f} st" for k in cols) + "   (median)")
    lg = m["long"]
    if "rollouts" in lg and objects:
        label = f"{lg['horizon']}-step, {lg['rollouts']} starts"
        print(f"{label:24s}" + "".join(f"{lg[k]['ball_tracking_horizon_median']:11.1f} st" if k in lg else f"{'-':>15s}"
                                       for k in cols) + "   (ball tracked, median)")
    r, o = m["reconstruction"], m["one_step"]
    if not objects:
        print(f"reconstruction    MSE {r['mse']:.5f}  ({r['frames']} frames)")
        if o.get("windows"):
            print(f"one step          MSE {o['mse']:.5f} (copy-last {o['copy_last_mse']:.5f})  ({o['windows']} windows)")
    else:
        _print_objects(m, r, o)
    sp = m["speed"]
    print(f"rollout speed     {sp['rollout_fps_batched']:.0f} frames/s batched "
          f"({sp['batched_rollouts_at_once']} at once), "
          f"{sp['rollout_fps_single']:.0f} frames/s single stream ({sp['device']}, {sp['torch_threads']} threads)")
    if "probe_vs_ram" in m:
        pv = m["probe_vs_ram"]
        print(f"probe vs RAM      ball {pv['ball']:.2%}  player {pv['player']:.2%}  opponent {pv['opponent']:.2%}"
              f"  ({pv['frames']} labelled frames)")
    print(f"time              {m['times_s']['total']:.1f} s")
    for w in m["warnings"]:
        print(f"WARNING: {w}")


def _print_objects(m: dict, r: dict, o: dict) -> None:
    """Pong's object lines of the eval table: reconstruction, one step, dreams."""
    print(f"reconstruction    MSE {r['mse']:.5f}  ball {r['ball']:.1%} "
          f"(frames with a ball {r['ball_on_frames_with_ball']:.1%})"
          f"  player {r['player']:.1%}  opponent {r['opponent']:.1%}  ({r['frames']} frames)")
    if o.get("windows"):
        base = f" (copy-last {o['copy_last_ball']:.1%}, const-velocity {o['const_velocity_ball']:.1%})" \
            if "copy_last_ball" in o else ""
        print(f"one step          MSE {o['mse']:.5f} (copy-last {o['copy_last_mse']:.5f})  ball {o['ball']:.1%}{base}  "
              f"player {o['player']:.1%}  opponent {o['opponent']:.1%}  ({o['windows']} windows, teacher-forced)")
    dm, dr = m["dream"]["model"], m["dream"]["real"]
    print(f"dream             {m['dream']['dreams']} x {m['dream']['steps']} steps, {m['dream']['actions']} actions:  "
          f"ball present {dm['ball']:.0%} (real {dr['ball']:.0%})  "
          f"ball moves {dm['ball_moves']:.0%} (real {dr['ball_moves']:.0%})"
          f"  paddles intact {dm['player_intact']:.0%} / {dm['opponent_intact']:.0%} "
          f"(real {dr['player_intact']:.0%} / {dr['opponent_intact']:.0%})"
          f"  opponent follows the ball r = {dm['opponent_follows']:.2f} (real {dr['opponent_follows']:.2f})")
    if "obeys" in m["dream"]:
        ob = m["dream"]["obeys"]
        print(f"dream obeys       only UP for {ob['steps']} steps: player paddle at the top wall in {ob['up_at_top']:.0%} "
              f"(ends at row {ob['up_end_y']:.1f}); only DOWN: at the bottom in {ob['down_at_bottom']:.0%} "
              f"(row {ob['down_end_y']:.1f})")


def print_summary(s: dict) -> None:
    """The lines a training run ends with: phase times, then measure's quick figures."""
    t, ol, r, dm = s["times_s"], s["open_loop"], s["reconstruction"], s["dream"]
    print(f"\nrun folder        {s['run_dir']}")
    print(f"data              {t['data']:6.1f} s  {s['train_frames']} training frames ({s['train_episodes']} episodes), "
          f"{r['frames']} held-out frames from other episodes")
    print(f"autoencoder       {t['autoencoder']:6.1f} s  held-out reconstruction MSE {r['mse']:.5f}")
    print(f"predictor         {t['predictor']:6.1f} s  held-out one-step loss {s['val_pred_1step']:.4f} (pred_loss: px, presence, turn, code)")
    print(f"eval + assets     {t['eval+assets']:6.1f} s  total {t['total']:.1f} s")
    H = ol["horizon"]
    if "const_velocity" not in ol:                   # a game without a probe: pixel figures only
        for name, label in (("model", "open loop"), ("copy_last", "copy-last-frame")):
            print(f"{label:17s} {ol['rollouts']} held-out starts, MSE at h=1/{H}: {ol[name]['mse']['1']:.5f}/"
                  f"{ol[name]['mse'][str(H)]:.5f}")
        print(f"objects           none measured: the probe knows Pong's objects only ({s['game']})")
    else:
        print(f"held-out objects  ball {r['ball']:.1%}  (on frames with a ball {r['ball_on_frames_with_ball']:.1%})"
              f"  player paddle {r['player']:.1%}  opponent paddle {r['opponent']:.1%}")
        for name, label in (("model", "open loop"), ("copy_last", "copy-last-frame")):
            o = ol[name]
            print(f"{label:17s} {ol['rollouts']} held-out starts, kept at h=1/{H}: ball {o['ball_ok']['1']:.0%}/"
                  f"{o['ball_ok'][str(H)]:.0%}  player {o['player_ok']['1']:.0%}/{o['player_ok'][str(H)]:.0%}  "
                  f"opponent {o['opponent_ok']['1']:.0%}/{o['opponent_ok'][str(H)]:.0%}  "
                  f"ball tracked {o['ball_tracking_horizon_median']:.0f} steps (median)")
        print(f"{'const-velocity':17s} the ball alone, kept at h=1/{H}: {ol['const_velocity']['ball_ok']['1']:.0%}/"
              f"{ol['const_velocity']['ball_ok'][str(H)]:.0%}  ball tracked "
              f"{ol['const_velocity']['ball_tracking_horizon_median']:.0f} steps (median)")
        print(f"dream             {s['dream']['dreams']} x {s['dream']['steps']} steps, random actions: ball present "
              f"{dm['model']['ball']:.0%} (real {dm['real']['ball']:.0%}), moving {dm['model']['ball_moves']:.0%}, "
              f"paddles intact {dm['model']['player_intact']:.0%} / {dm['model']['opponent_intact']:.0%}")
    where = s.get("pictures", [])
    kept = "" if len(where) > 1 else "  (assets/ left as it is: only the default recipe refreshes it, " \
                                     "experiment.refresh_assets=always to force)"
    print(f"pictures          {', '.join(where) or 'none'}{kept}")


def main(argv: list[str]) -> int:
    """python world_model.py eval [--checkpoint PATH] [--data SOURCE] [heldout.<field>=value ...]"""
    ap = Parser(prog="world_model.py eval", description="measure a checkpoint on held-out Pong: "
                                 "open-loop rollouts vs the real game by horizon, baselines, reconstruction, dreams",
                                 epilog="overrides: heldout.<field>=value (HeldoutConfig in config.py), "
                                 "experiment.out_dir=...")
    ap.add_argument("--checkpoint", help="default: the newest runs/*/checkpoints/best.pt")
    ap.add_argument("--data", help="held-out data instead of a fresh recording: a dataset folder or d4rl:<id>; "
                    "if it is the model's training source, only its held-out episodes are used")
    ap.add_argument("--config", help="YAML file merged into the defaults before the overrides")
    ap.add_argument("overrides", nargs="*", help="key=value pairs")
    args = ap.parse_args(argv)
    cfg = make_config(args.overrides, args.config)
    ckpt = which_checkpoint(args.checkpoint, cfg.experiment.out_dir, "best.pt")
    data = None
    if args.data:
        from data.d4rl_frames import load_source, split_episodes
        wm = WorldModel.load(ckpt)
        data = load_source(args.data, game=wm.game, num_actions=wm.num_actions)
        if args.data == wm.cfg.data.source:  # never score the model on its own training episodes
            data = split_episodes(data, wm.cfg.data.val_fraction)[1]
    eval_run(ckpt, cfg.experiment.out_dir, data, cfg.heldout)
    return 0
