import numpy as np
import pytest
import torch

import world_model as W


def test_shapes_and_dtypes(trained, val_data):
    wm, _, _ = trained
    x = torch.from_numpy(val_data.frames[:5])
    z = wm.ae.encode(x)
    assert z.shape == (5, 128)
    assert wm.ae.decode(z).shape == (5, 84, 84)
    d = wm.start(z[None, :4].expand(3, -1, -1))
    assert d.c.shape == (3, 4, 7) and d.g.shape == (3, 121) and set(d.c[:, :, W.BP].unique().tolist()) <= {0.0, 1.0}
    nxt, g, _ = wm.predictor(d.c, d.g, torch.tensor([[0, 2, 3, 1]] * 3), torch.zeros(3, 4))
    assert nxt.shape == (3, 7) and g.shape == (3, 121)
    rec = wm.reconstruct(val_data.frames[:7])
    assert rec.dtype == np.uint8 and rec.shape == (7, 84, 84)
    dream = wm.rollout(val_data.frames[:wm.context], val_data.actions[3:15])
    assert dream.dtype == np.uint8 and dream.shape == (12, 84, 84)


def test_losses_fall_on_real_frames(trained):
    _, ae_hist, pred_hist = trained
    assert ae_hist[-1]["val_loss"] < 0.5 * ae_hist[0]["val_loss"]
    for phase in ("pred", "tune"):      # on the probe's coordinates, then on the encoder's latents: each falls
        # The loss of the unrolled windows: a single step's is mostly the tables' (the ball's near walls and paddles,
        # the opponent's), which do not learn, and moved by noise over the few steps here (2.47 -> 2.49). Validation
        # runs the dream's rules too, and what they get right leaves less to learn: the tune phase's 20 steps here
        # fell 20.7 -> 19.3 (-6.7 %) before the ball past a paddle's face kept Pong's speed, 16.2 -> 15.6 (-3.7 %) since.
        h = [r["val_loss"] for r in pred_hist if r["phase"] == phase]
        assert len(h) >= 2 and h[-1] < (0.95 if phase == "pred" else 0.97) * h[0], (phase, h)


def test_margin_loss_punishes_ball_bright_paddles_and_dim_balls(val_data):
    from data.probe import probe
    frames = val_data.frames[:64]
    p = probe(frames)
    i = int(np.flatnonzero(p["ball"] & p["player"])[0])
    x = torch.from_numpy(frames[i:i + 1])                                    # (1, 84, 84)
    target, bg = x.float() / 255, torch.from_numpy(W._background(frames))
    c = W.make_config([]).ae
    thr, m = c.bright_threshold, c.margin
    y = int(round(p["player_y"][i]))

    def margin_term(recon):
        on = W.pixel_loss(recon, target, bg, c)
        off = W.pixel_loss(recon, target, bg, W.AEConfig(margin_weight=0.0))
        return (on - off).item()

    base = margin_term(target.clone())
    ghost = target.clone()
    ghost[0, y, 74] = 0.62                  # a paddle pixel drawn 'ball-bright' (the real one is <= 0.58)
    assert target[0, y, 74] <= thr - 0.01
    expected = c.margin_weight * ((0.62 - (thr - m)) ** 2 - max(target[0, y, 74].item() - (thr - m), 0) ** 2) / 84 ** 2
    assert margin_term(ghost) - base == pytest.approx(expected, rel=1e-3)
    dim = target.clone()
    by, bx = int(round(p["ball_y"][i])), int(round(p["ball_x"][i]))
    peak = target[0, by - 1:by + 2, bx - 1:bx + 2].max()
    dim[0][dim[0] == peak] = thr - 0.05    # the ball drawn just too dim for the probe
    assert margin_term(dim) > base + c.margin_weight * (m + 0.05) ** 2 / 84 ** 2 * 0.99


def test_the_peak_term_at_bright_pixels_is_max_pool2d_over_whole_frames(val_data):
    """pixel_loss's 3x3 peak term is found only where it can be nonzero; its value and its gradient are those of
    max_pool2d over whole frames (the gradient to each window's first maximum), on real frames with a blurred,
    noisy reconstruction (ties, a ball smeared dim, ghosts) and the walls' exact background."""
    import torch.nn.functional as F
    frames = val_data.frames[:32]
    c = W.make_config([]).ae
    target = torch.from_numpy(frames).float() / 255
    blur = F.avg_pool2d(target[:, None], 3, 1, 1)[:, 0]
    recon0 = torch.where(torch.rand(32, 84, 84) < 0.5, blur, target) + 0.05 * torch.randn(32, 84, 84).round()
    recon0[:, 40:44] = target[:, 40:44]                                       # exact rows: no error there

    def whole(recon):                                                       # the term as max_pool2d gives it
        pr, pt = F.max_pool2d(recon[:, None], 3, 1, 1), F.max_pool2d(target[:, None], 3, 1, 1)
        pb = ((pt > c.bright_threshold) | (pr.detach() > c.bright_threshold)).float()
        return c.peak_weight * (pb * (pr - pt) ** 2).mean()

    grads = []
    for term in (whole, lambda r: c.peak_weight * W.peak_term(r, target, c.bright_threshold)):
        r = recon0.clone().requires_grad_(True)
        value = term(r)
        value.backward()
        grads.append((value.item(), r.grad))
    (v0, g0), (v1, g1) = grads
    assert v0 > 1e-3 and v1 == pytest.approx(v0, rel=1e-4)
    assert (g0 != 0).sum() > 100 and torch.allclose(g1, g0, rtol=1e-4, atol=1e-9)


def test_the_score_band_starts_as_the_background_and_its_error_weighs_more(val_data):
    """A fresh autoencoder paints nothing over the median frame's score band (random paint was grain that
    training never washed out), and grain there, mostly too faint to count as foreground, costs band_weight
    times its squared error more."""
    frames = val_data.frames[:64]
    cfg = W.make_config([])
    wm = W.WorldModel(cfg, 6)
    wm.ae.background.copy_(torch.from_numpy(W._background(frames)))
    z = torch.randn(3, cfg.model.latent_dim)
    z[:, W.BP] = -30.0                                                       # no ball; paddles stay below the band
    band = wm.ae.band.bool()
    assert torch.allclose(wm.ae.decode(z)[:, band], wm.ae.background[band].expand(3, -1), atol=1e-6)
    target = torch.from_numpy(frames[:8]).float() / 255
    grain = target + 0.03 * torch.randn(8, 84, 84) * wm.ae.band                # below fg_threshold (0.05), mostly
    off = W.pixel_loss(grain, target, wm.ae.background, cfg.ae)
    on = W.pixel_loss(grain, target, wm.ae.background, cfg.ae, wm.ae.band)
    assert (on - off).item() == pytest.approx(cfg.ae.band_weight * ((grain - target) ** 2).mean().item(), rel=1e-4)


def test_actions_change_the_dream(trained, val_data):
    wm, _, _ = trained
    ctx = val_data.frames[:wm.context]
    up, down = wm.rollout(ctx, np.full(10, 2)), wm.rollout(ctx, np.full(10, 3))
    assert not np.array_equal(up, down)
    assert np.array_equal(up, wm.rollout(ctx, np.full(10, 2)))  # deterministic


def test_windows_never_cross_an_episode_boundary():
    from data.d4rl_frames import FrameData
    ep = np.repeat(np.arange(5), [3, 10, 2, 7, 9])           # episodes of 3, 10, 2, 7 and 9 frames
    n = len(ep)
    d = FrameData(np.zeros((n, 84, 84), np.uint8), np.zeros(n, np.int64), ep, None, "Pong", 6)
    starts = d.starts(5)
    assert len(starts) == (10 - 4) + (7 - 4) + (9 - 4)
    w = W.window_batch(starts, 5, 1000, np.random.default_rng(0))  # (1000, 5)
    assert w.shape == (1000, 5)
    assert np.all(ep[w] == ep[w[:, :1]])                        # every window inside one episode
    assert np.all(np.diff(w, axis=1) == 1)                      # truly consecutive frames


def test_checkpoint_round_trip(trained, val_data, tmp_path):
    wm, _, _ = trained
    path = tmp_path / "ck" / "last.pt"
    wm.save(path)
    assert not (tmp_path / "ck" / "last.pt.tmp").exists()
    back = W.WorldModel.load(path)
    assert back.cfg == wm.cfg and back.context == wm.context
    x = val_data.frames[:6]
    assert np.array_equal(back.reconstruct(x), wm.reconstruct(x))
    ctx, acts = val_data.frames[:wm.context], val_data.actions[:25]
    assert np.array_equal(back.rollout(ctx, acts), wm.rollout(ctx, acts))


def test_a_checkpoint_from_before_the_paddles_key_weights_loads_as_it_was_built(trained, val_data, tmp_path):
    """The opponent's table is built with key weights and a key (the next frame's ball) the checkpoint keeps
    (opp_weights, opp_next); one written before they were kept was built with OPP_KEY_V1 and the last frame's ball and
    loads so, and without a player's table (its paddle: the MLP's)."""
    wm, _, _ = trained
    p = wm.predictor
    assert len(p.play_keys) > 100 and torch.equal(p.opp_weights, torch.tensor(W.OPP_KEY)) and bool(p.opp_next)
    path = tmp_path / "old.pt"
    wm.save(path)
    ck = torch.load(path, weights_only=False)
    for k in ("opp_weights", "opp_next", "play_keys", "play_steps", "play_counts", "play_weights"):
        del ck["model"][f"predictor.{k}"]
    torch.save(ck, path)
    old = W.WorldModel.load(path)
    assert torch.equal(old.predictor.opp_weights, torch.tensor(W.OPP_KEY_V1)) and not bool(old.predictor.opp_next)
    assert len(old.predictor.play_keys) == 0
    ctx, acts = val_data.frames[:wm.context], val_data.actions[:25]
    assert old.rollout(ctx, acts).shape == (25, 84, 84)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        W.WorldModel.load(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unreadable"):
        W.WorldModel.load(bad)


@pytest.mark.parametrize("make, msg", [
    (lambda f, k: f[:k].astype(np.float32), "uint8"),
    (lambda f, k: f[:k, :80], r"\(N, 84, 84\)"),
    (lambda f, k: f[:k + 1], "exactly"),
    (lambda f, k: f[0], r"\(N, 84, 84\)"),
])
def test_rollout_rejects_bad_context(trained, val_data, make, msg):
    wm, _, _ = trained
    with pytest.raises(ValueError, match=msg):
        wm.rollout(make(val_data.frames, wm.context), [0, 1])


def test_rollout_and_reconstruct_reject_bad_actions_and_frames(trained, val_data):
    wm, _, _ = trained
    ctx = val_data.frames[:wm.context]
    with pytest.raises(ValueError, match="integer"):
        wm.rollout(ctx, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="integer"):
        wm.rollout(ctx, np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        wm.rollout(ctx, [0, 7])
    with pytest.raises(ValueError, match="uint8"):
        wm.reconstruct(val_data.frames.astype(np.int16))


def test_short_context_and_pure_dynamics_train(tiny_cfg, train_data, val_data):
    cfg = W.make_config(["model.context=2", "model.action_conditioned=false", "ae.steps=5", "pred.steps=5"],
                        base=tiny_cfg)
    wm, _ = W.train_autoencoder(cfg, train_data, val_data, progress=False)
    wm, _ = W.train_predictor(cfg, wm, train_data, val_data, progress=False)
    ctx = val_data.frames[:2]
    assert np.array_equal(wm.rollout(ctx, [2] * 4), wm.rollout(ctx, [3] * 4))  # the action is ignored


def test_rollout_uses_known_context_actions(trained, val_data):
    wm, _, _ = trained
    ctx, acts = val_data.frames[:wm.context], val_data.actions[wm.context - 1:wm.context + 9]
    unknown = wm.rollout(ctx, acts)
    known = wm.rollout(ctx, acts, context_actions=val_data.actions[:wm.context - 1])
    assert known.shape == unknown.shape == (10, 84, 84)
    assert not np.array_equal(known, unknown)  # the past actions are an input, not ignored
    with pytest.raises(ValueError, match="context_actions must hold 3"):
        wm.rollout(ctx, acts, context_actions=[0])


def test_a_checkpoint_trained_on_a_gpu_loads_and_plays_on_a_cpu(trained, val_data, tmp_path):
    """Train in Colab, play on a laptop: CUDA, bf16, compile and pinned memory are what training
    needs of its machine, not what loading a checkpoint needs."""
    wm = trained[0]
    gpu_cfg = W.make_config(["train.device=cuda", "train.precision=bf16", "train.compile=true",
                             "data.pin_memory=true"], base=wm.cfg)
    gpu = W.WorldModel(gpu_cfg, wm.num_actions, wm.game)
    gpu.load_state_dict(wm.state_dict())
    gpu.save(tmp_path / "gpu.pt")
    back = W.WorldModel.load(tmp_path / "gpu.pt")
    assert back.cfg.train.device == "cuda" and back.cfg.train.compile and back.device.type == "cpu"
    frames = val_data.frames[:8]
    assert np.array_equal(back.reconstruct(frames), wm.reconstruct(frames))
    ctx, acts = val_data.frames[:wm.context], val_data.actions[wm.context - 1:wm.context + 9]
    assert np.array_equal(back.rollout(ctx, acts), wm.rollout(ctx, acts))
    if not torch.cuda.is_available():   # training with that config is what this machine refuses
        with pytest.raises(W.UsageError, match="train.device=cuda but torch sees no CUDA device"):
            gpu_cfg.check_host()
    with pytest.raises(W.UsageError, match="train.precision needs CUDA, but train.device=cpu"):
        W.make_config(["train.device=cpu", "train.precision=bf16"])   # inconsistent on any machine


def test_only_usage_errors_become_one_line(monkeypatch, capsys):
    """A user's mistake is one line and exit 2; a bug (any other exception) keeps its traceback."""
    assert W.main(["ae.steps=0"]) == 2
    assert capsys.readouterr().err.strip() == "error: ae.steps=0 is not allowed: must be >= 1"

    def bug(*a, **k):
        raise ValueError("a bug inside numpy")
    monkeypatch.setattr(W, "train_and_evaluate", bug)
    with pytest.raises(ValueError, match="a bug inside numpy"):
        W.main([])
