"""The Pong object probe against the emulator's RAM (AtariARI indices) on real frames."""
import numpy as np
import pytest

from data.probe import compare_probes, object_agreement, probe, ram_labels, record_labelled, validate_probe


@pytest.mark.parametrize("seed", [7, 11, 12])
def test_probe_agrees_with_ram_labels(seed):
    # Labels from the RAM of both raw frames that AtariPreprocessing max-pools into each observation.
    frames, ram = record_labelled("Pong", steps=1000, seed=seed)
    assert ram.shape == (1000, 2, 128)
    v = validate_probe(frames, ram)
    for k in ("ball", "player", "opponent"):   # object_agreement's rules: ball within 2 px, paddles within 1 px
        assert v[k] >= 0.99, (k, v)
        assert v[k + "_presence"] >= 0.99, (k, v)
        assert v[k + "_err_px_median"] < 0.5, (k, v)
    lab = ram_labels(ram)
    assert 0.5 < lab["ball"].mean() < 0.98      # points are scored: frames without a ball are in the test


def test_ram_labels_place_objects_where_the_probe_finds_them():
    # One hand-checked state: ball at RAM (x 100, y 100), paddles at y 100, identical in both pooled frames.
    ram = np.zeros((1, 2, 128), np.uint8)
    ram[0, :, [49, 54, 50, 51]] = 100
    lab = ram_labels(ram)
    assert lab["ball"][0] and lab["player"][0] and lab["opponent"][0]
    assert lab["ball_x"][0] == pytest.approx((100 - 48) * 84 / 160 - 0.5)   # raw columns 51-52
    assert lab["ball_y"][0] == pytest.approx((100 - 12.5) / 2.5 - 0.5)      # raw rows 85-88
    assert lab["opponent_y"][0] == pytest.approx((100 - 7) / 2.5 - 0.5)     # raw rows 85-100
    ram[0, :, 54] = 0                                                       # y = 0: the ball is hidden
    ram[0, :, 50] = 20                                                      # opponent behind the top wall
    lab = ram_labels(ram)
    assert not lab["ball"][0] and not lab["opponent"][0]


def test_paddle_ignores_a_ball_passing_its_columns(val_data):
    p = probe(val_data.frames)
    i = int(np.flatnonzero(~p["ball"] & (np.abs(p["player_y"] - 60) < 3) & (p["player_rows"] >= 6))[0])
    frame = val_data.frames[i].copy()
    frame[30:32, 72:74] = [[150, 220], [130, 150]]   # a ball at the player's columns, with dim edges, far above it
    q = probe(frame[None])
    assert q["ball"][0] and abs(q["ball_y"][0] - 30.5) < 1
    assert q["player_y"][0] == p["player_y"][i] and q["player_rows"][0] == p["player_rows"][i]


def test_object_agreement_counts_missing_and_moved_objects(val_data):
    real = val_data.frames
    ok = object_agreement(real, real)
    assert all(v.all() for v in ok.values())
    has_ball = probe(real)["ball"]
    empty = np.full_like(real, 87)
    assert not object_agreement(real, empty)["ball"][has_ball].any()         # ball erased
    shifted = np.roll(real, 3, axis=1)                                        # everything 3 rows down
    moved = object_agreement(real, shifted)
    assert not moved["ball"][has_ball].any() and moved["player"].mean() < 0.2
    down = real.copy()
    down[:, 17:77] = real[:, 14:74]                                           # the playfield 3 rows down, walls kept
    p = probe(real)
    c = compare_probes(p, probe(down))
    inside = p["player"] & (p["player_y"] > 22) & (p["player_y"] < 68)       # clear of both walls after the shift
    assert np.allclose(c["player_err"][inside], 3.0)
    assert np.isnan(c["ball_err"][~has_ball]).all()


def test_the_ball_moves_at_the_speeds_the_predictor_snaps_to_and_is_seen_only_in_its_columns():
    from data.d4rl_frames import record
    from data.probe import BALL_SPEEDS, BALL_X_RANGE
    d = record("Pong", 3000, 5, "random+tracker")
    p, ep = probe(d.frames), np.asarray(d.episode)
    ok = p["ball"][1:] & p["ball"][:-1] & (ep[1:] == ep[:-1])
    for j, key in enumerate(("ball_x", "ball_y")):
        step = np.abs(np.diff(p[key])[ok])                                     # (M,) pixels a step
        near = np.abs(step[:, None] - np.array(BALL_SPEEDS[j])).min(1) < 0.4
        assert near.mean() > 0.9, (key, near.mean())
    x = p["ball_x"][p["ball"]]                                               # where a ball is ever seen
    assert BALL_X_RANGE[0] <= x.min() and x.max() <= BALL_X_RANGE[1]
