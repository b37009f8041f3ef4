"""Held-out evaluation: files, baselines that mean what they say, metrics that can fail."""
import csv
import json

import numpy as np
import pytest

from data.d4rl_frames import FrameData
from data.probe import UP, object_agreement, probe
from evaluate import (
    ball_kept,
    constant_velocity,
    difference,
    evaluate,
    quick_config,
    METHODS,
    HeldoutConfig,
    eval_run,
    evaluate_checkpoint,
    panels,
    heldout_data,
    obeys_actions,
    plausibility,
    print_eval_summary,
    rollout_inputs,
    spread_starts,
    ssim_frames,
    tracking_horizon,
)

CFG = HeldoutConfig(horizon=10, starts=8, long_horizon=30, long_starts=2, dream_steps=30, dreams=2, videos=1,
                        probe_frames=0)


@pytest.fixture(scope="module")
def evaluated(trained, val_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    return evaluate_checkpoint(trained[0], val_data, out, CFG, progress=False), out


def _csv(out):
    with open(out / "metrics_by_horizon.csv") as fh:
        return list(csv.DictReader(fh))


def test_writes_every_file_with_one_row_per_horizon_step(evaluated):
    m, out = evaluated
    for f in ("metrics.json", "plots/mse_vs_horizon.png", "plots/ball_vs_horizon.png", "videos/rollout_0.gif"):
        assert (out / f).stat().st_size > 1000, f
    assert json.loads((out / "metrics.json").read_text())["open_loop"]["rollouts"] == 8
    rows = _csv(out)
    assert [int(r["h"]) for r in rows] == list(range(1, CFG.horizon + 1))
    for method in METHODS:
        for col in ("mse", "psnr", "ssim", "ball_present_agreement", "ball_pos_err", "ball_tracked_share",
                    "player_err", "opponent_err", "player_ok", "opponent_ok"):
            assert f"{method}_{col}" in rows[0], (method, col)
    assert m["videos"][0] == "rollout_0.gif"


def test_baselines_and_model_match_direct_computations(evaluated, trained, val_data):
    m, out = evaluated
    wm, K, H = trained[0], trained[0].context, CFG.horizon
    s = spread_starts(val_data, K + H, CFG.starts)
    real, last = val_data.frames[s + K].astype(np.float32), val_data.frames[s + K - 1]
    ol = m["open_loop"]
    # copy-last at h = 1 is the last context frame against the first real continuation frame.
    assert ol["copy_last"]["mse"]["1"] == pytest.approx(np.mean((last - real) ** 2) / 255 ** 2, rel=1e-6)
    # The batched model at h = 1 equals the single-stream API with the recorded actions.
    one = np.stack([wm.rollout(val_data.frames[t:t + K], val_data.actions[t + K - 1:t + K],
                               val_data.actions[t:t + K - 1])[0] for t in s])
    assert ol["model"]["mse"]["1"] == pytest.approx(np.mean((one - real) ** 2) / 255 ** 2, rel=1e-5)
    assert ol["actions_change_prediction"]        # zeroing the actions changes what the model draws
    rows = _csv(out)
    assert float(rows[0]["copy_last_mse"]) == pytest.approx(ol["copy_last"]["mse"]["1"], rel=1e-5)
    worse = [int(r["h"]) for r in rows if float(r["copy_last_mse"]) < float(r["model_mse"])]
    assert worse == ol["copy_last_beats_model_mse_at"]
    assert bool(m["warnings"]) == bool(worse)
    # One step on every window: the baselines on the same windows as the model, and agreeing with open_loop's.
    o, starts = m["one_step"], val_data.starts(K + 1)
    assert o["windows"] == len(starts)
    kept = object_agreement(val_data.frames[starts + K], val_data.frames[starts + K - 1])["ball"]
    assert o["copy_last_ball"] == pytest.approx(kept.mean())
    assert o["const_velocity_ball"] > o["copy_last_ball"]          # the ball moves: standing still loses it


def test_ball_tracking_is_consistent_across_outputs(evaluated):
    m, out = evaluated
    rows = _csv(out)
    for method in METHODS:
        share = [float(r[f"{method}_ball_tracked_share"]) for r in rows]
        assert all(0 <= a <= 1 for a in share) and all(np.diff(share) <= 0)  # never regained
        assert 0 <= m["open_loop"][method]["ball_tracking_horizon_median"] <= CFG.horizon
    assert tracking_horizon(np.array([[1, 1, 0, 1], [1, 1, 1, 1], [0, 1, 1, 1]], bool)).tolist() == [2, 4, 0]


def test_ssim_is_scikit_images_per_frame():
    from skimage.metrics import structural_similarity
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 84, 84), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    assert np.allclose(ssim_frames(a, a), 1.0)
    assert np.allclose(ssim_frames(a, b), [structural_similarity(x, y, data_range=255) for x, y in zip(a, b)])


def test_rollout_windows_stay_in_one_episode_and_align_actions():
    ep = np.repeat(np.arange(4), [30, 12, 40, 25])
    frames = np.zeros((len(ep), 84, 84), np.uint8)
    data = FrameData(frames, (np.arange(len(ep)) % 6).astype(np.uint8), ep, None, "Pong", 6)  # uint8, as on disk
    s = spread_starts(data, 20, 50)
    assert (ep[s] == ep[s + 19]).all() and set(ep[s]) == {0, 2, 3}     # episode 1 is too short, the rest are used
    ctx, acts, past, valid = rollout_inputs(data, s, 4, 16)
    assert ctx.shape == (len(s), 4, 84, 84) and (valid == 4).all()
    assert (acts[:, 0].numpy() == data.actions[s + 3]).all()                # the action taken at the last context frame
    assert (past.numpy() == data.actions[s[:, None] + np.arange(3)]).all()
    assert (rollout_inputs(data, s, 4, 16, zero_actions=True)[1] == -1).all()
    # The memory before each window: the 16 frames before it, none from another episode (the first frame repeated).
    data.frames[:] = np.arange(len(ep), dtype=np.uint8)[:, None, None]      # each frame shows its index
    ctx, _, _, valid = rollout_inputs(data, s, 4, 16, memory=16)
    first = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])[ep[s]]          # each window's episode's first frame
    assert ctx.shape == (len(s), 20, 84, 84) and (valid.numpy() == 4 + np.minimum(16, s - first)).all()
    want = np.maximum(s[:, None] + np.arange(-16, 4), first[:, None])
    assert (ctx[:, :, 0, 0].numpy() == want).all() and (valid < 20).any() and (valid == 20).any()


def test_plausibility_and_panels(val_data):
    real = val_data.frames
    p = plausibility(real, np.ones(len(real) - 1, bool))
    assert p["ball"] == pytest.approx(probe(real)["ball"].mean()) and p["ball_moves"] > 0.9 and p["player_intact"] > 0.9
    empty = plausibility(np.full_like(real, 87), np.ones(len(real) - 1, bool))
    assert empty["ball"] == 0 and empty["player_intact"] == 0
    v = panels([real[:5], real[:5], difference(real[:5], real[:5])], ["real  step {t}", "model", "|difference|"])
    assert v.shape == (5, 252, 3 * 252 + 8) and (v[:, 20:, 2 * 256:] == 0).all()   # no difference below the label
    assert (v[:, 20:, :252] == real[:5].repeat(3, 1).repeat(3, 2)[:, 20:]).all()    # frames upscaled, unchanged
    assert not np.array_equal(v[0, :20, :100], v[1, :20, :100])                    # the step number is drawn
    single = panels([real[0]], ["dream"], s=2)
    assert single.shape == (168, 168)


def test_training_summary_is_the_eval_commands_quick_mode(trained, tiny_cfg, val_data, tmp_path):
    """One evaluation path: the figures a training run ends with are evaluate_checkpoint's, on the
    same data with quick_config's settings."""
    wm = trained[0]
    quick = quick_config(tiny_cfg)
    s = evaluate(tiny_cfg, wm, val_data)
    m = evaluate_checkpoint(wm, val_data, tmp_path, quick, progress=False)
    assert s["open_loop"]["rollouts"] == m["open_loop"]["rollouts"] == min(tiny_cfg.eval.summary_starts,
                                                                          len(val_data.starts(wm.context + 30)))
    for k in ("model", "copy_last", "zero_action"):
        assert s["open_loop"][k]["ball_ok"] == m["open_loop"][k]["ball_ok"]
        assert s["open_loop"][k]["ball_tracking_horizon_median"] == m["open_loop"][k]["ball_tracking_horizon_median"]
    assert json.dumps(s["reconstruction"]) == json.dumps(m["reconstruction"])   # NaN-safe equality
    assert json.dumps(s["dream"]) == json.dumps(m["dream"])
    assert "ssim" not in s["open_loop"]["model"] and s["long"]["skipped"] == "off"
    # Copying the last real frame keeps a still paddle; a moving ball is lost within steps.
    assert s["open_loop"]["copy_last"]["ball_tracking_horizon_median"] < quick.horizon


def test_heldout_recording_never_reuses_a_training_seed(trained):
    with pytest.raises(ValueError, match="training"):
        heldout_data(trained[0], HeldoutConfig(seed=trained[0].cfg.data.val_seed, policy="random"))
    assert HeldoutConfig().policy != trained[0].cfg.data.policy          # by default another policy too


def test_summary_prints_the_table(evaluated, capsys):
    m, _ = evaluated
    print_eval_summary(m)
    text = capsys.readouterr().out
    assert "mse h=1" in text and "copy_last" in text and "zero_action" in text
    assert "const_velocity" in text and "ball tracked, 4 px" in text and "dream obeys" in text
    ob = m["dream"]["obeys"]
    assert 0 <= ob["up_at_top"] <= 1 and 0 <= ob["down_at_bottom"] <= 1
    assert ("WARNING: copy-last-frame beats the model" in text) == bool(m["open_loop"]["copy_last_beats_model_mse_at"])


def test_eval_run_makes_its_own_run_folder(trained, val_data, tmp_path):
    ckpt = tmp_path / "last.pt"
    trained[0].save(ckpt)
    run_dir, _ = eval_run(ckpt, tmp_path / "runs", val_data, CFG, progress=False)
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.endswith("_pong_eval")
    assert json.loads((run_dir / "metrics.json").read_text())["checkpoint"] == str(ckpt)


def test_eval_command_writes_its_run_folder(trained, tmp_path):
    import subprocess
    import sys

    import world_model as W
    from conftest import ROOT
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    trained[0].save(ckpt)
    small = [o for o in W.SMALL_BUDGET if o.startswith("heldout.")]
    res = subprocess.run([sys.executable, "world_model.py", "eval", "--checkpoint", str(ckpt), *small,
                          f"experiment.out_dir={tmp_path}/runs"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines()[0].startswith(f"checkpoint {ckpt} (run run, written ")   # says what it measures
    (out,) = (tmp_path / "runs").iterdir()
    assert out.name.endswith("_pong_eval")
    m = json.loads((out / "metrics.json").read_text())
    assert m["checkpoint"] == str(ckpt) and m["data"]["source"].startswith("recorded now: seed 1234, policy tracker")
    assert (out / "plots" / "mse_vs_horizon.png").is_file() and (out / "metrics_by_horizon.csv").is_file()
    assert "copy_last" in res.stdout and "probe vs RAM" in res.stdout
    bad = subprocess.run([sys.executable, "world_model.py", "eval", "--checkpoint", str(tmp_path / "nope.pt")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not found" in bad.stderr


def _ball_frames(centres: list[tuple[int, float]]) -> np.ndarray:
    """Grey frames with a 1-column, 2-row ball whose probe centroid is (x, y)."""
    f = np.full((len(centres), 84, 84), 87, np.uint8)
    for i, (x, y) in enumerate(centres):
        f[i, int(y - 0.5):int(y - 0.5) + 2, x] = 220
    return f


def test_constant_velocity_tracks_a_straight_ball_exactly_and_bounces_off_the_walls():
    path = [(20 + 3 * t, 40.5 + 2 * t) for t in range(10)]               # straight: 3 px right, 2 px down a step
    real = _ball_frames(path)
    p = probe(real)
    assert np.allclose(p["ball_x"], [x for x, _ in path]) and np.allclose(p["ball_y"], [y for _, y in path])
    cv = constant_velocity(real[None, :4], 6)                            # context: the first 4 frames
    truth = {k: v[4:][None] for k, v in p.items()}
    assert np.allclose(cv["ball_x"], truth["ball_x"]) and np.allclose(cv["ball_y"], truth["ball_y"])
    assert ball_kept(truth, cv, 0.01).all()
    # Down at 4 px a step from row 66.5: 70.5, 74.5, then mirrored at the bottom wall (76): 73.5, 69.5.
    bounce = constant_velocity(_ball_frames([(30, 62.5), (32, 66.5)])[None], 4)
    assert np.allclose(bounce["ball_y"][0], [70.5, 74.5, 73.5, 69.5]) and bounce["ball"].all()
    # No ball in the last context frame: none predicted; a ball just served (none before it) stays put.
    grey = np.full((2, 84, 84), 87, np.uint8)
    served = _ball_frames([(30, 40.5)])
    cv = constant_velocity(np.stack([grey, np.concatenate([grey[:1], served])]), 3)
    assert not cv["ball"][0].any() and cv["ball"][1].all() and np.allclose(cv["ball_x"][1], 30)
    # A ball leaving the screen is gone.
    assert not constant_velocity(_ball_frames([(75, 40.5), (80, 40.5)])[None], 2)["ball"][0, 1]


class _Paddles:
    """A stand-in world model whose 'dreams' are fixed frames: a real frame with the player's paddle moved
    to the top wall (UP dreams) or the bottom wall (DOWN dreams)."""

    def __init__(self, frame, last_up=None):
        self.frame, self.last_up = frame, last_up

    def rollout_batch(self, context, actions, context_actions):
        import torch
        from data.probe import PADDLE_COLS, PLAYFIELD
        n, T = actions.shape
        a, b = PADDLE_COLS["player"]
        out = np.repeat(self.frame[None, None], n, 0).repeat(T, 1)             # (n, T, 84, 84)
        out[:, :, PLAYFIELD[0]:PLAYFIELD[1], a:b] = 87
        up = (actions[:, 0] == UP).numpy()
        out[up, :, PLAYFIELD[0]:PLAYFIELD[0] + 2, a:b] = [116, 143, 122]      # 2 rows left at the top wall
        out[~up, :, PLAYFIELD[1] - 7:PLAYFIELD[1], a:b] = [116, 143, 122]
        if self.last_up is not None:
            out[up, -1] = self.last_up
        return torch.from_numpy(out).float() / 255


def test_where_a_dream_ends_is_not_moved_by_a_ball_crossing_the_paddles_columns(val_data):
    import torch
    from data.probe import PADDLE_COLS
    p = probe(val_data.frames)
    frame = val_data.frames[int(np.flatnonzero(~p["ball"])[0])].copy()
    ctx, acts = torch.from_numpy(val_data.frames[None, :4].repeat(2, 0)), torch.full((2, 3), -1)
    cfg = HeldoutConfig(dream_steps=20)
    assert obeys_actions(_Paddles(frame), ctx[:1], acts[:1], cfg)["up_at_top"] == 1.0
    assert obeys_actions(_Paddles(frame), ctx[:1], acts[:1], cfg)["down_at_bottom"] == 1.0
    # The last UP frame: a decoded ball, blurred over 3 rows, crossing the player's columns at mid height
    # (as a dream drew it): the probe reads its edge as 3 more paddle rows there, and the paddle's centre moves.
    last = _Paddles(frame).rollout_batch(None, torch.full((1, 1), UP), None)[0, 0].mul(255).round().byte().numpy()
    a = PADDLE_COLS["player"][0]
    last[45:48, a:a + 3] = [[121, 163, 114], [140, 205, 129], [109, 137, 105]]
    assert probe(last[None])["player_y"][0] > 25                               # one frame alone: not at the top
    ob = obeys_actions(_Paddles(frame, last), ctx[:1], acts[:1], cfg)
    assert ob["up_at_top"] == 1.0 and ob["up_end_y"] < 18
