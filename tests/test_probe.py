"""The Pong object probe against the emulator's RAM (AtariARI indices) on real frames."""
import numpy as np

from data.d4rl_frames import record
import world_model as W

BALL_X, BALL_Y, PLAYER_Y, OPPONENT_Y = 49, 54, 51, 50


def _fit(ram_value, pixel):
    a, b = np.polyfit(ram_value, pixel, 1)
    return np.corrcoef(ram_value, pixel)[0, 1], np.abs(pixel - (a * ram_value + b))


def test_probe_agrees_with_ram():
    d = record("Pong", steps=1500, seed=7)
    p, ram = W.probe(d.frames), d.ram.astype(np.float64)
    in_play = p["ball"] & (p["ball_x"] > 11) & (p["ball_x"] < 72)
    assert in_play.sum() > 300
    for idx, key in ((BALL_X, "ball_x"), (BALL_Y, "ball_y")):
        r, res = _fit(ram[in_play, idx], p[key][in_play])
        assert r > 0.999, key
        assert np.mean(res < 1.0) > 0.99, key
    # Presence: the RAM hides the ball with y = 0 and its x maps on screen for 49 <= x <= 209.
    ram_ball = (ram[:, BALL_Y] > 0) & (ram[:, BALL_X] >= 49) & (ram[:, BALL_X] <= 209)
    assert np.mean(ram_ball == p["ball"]) > 0.97
    for idx, key in ((PLAYER_Y, "player"), (OPPONENT_Y, "opponent")):
        whole = p[key + "_rows"] >= 7  # fully visible, not half behind a wall
        r, res = _fit(ram[whole, idx], p[key + "_y"][whole])
        assert r > 0.99, key


def test_object_agreement_counts_missing_and_moved_objects(val_data):
    real = val_data.frames
    ok = W.object_agreement(real, real)
    assert all(v.all() for v in ok.values())
    has_ball = W.probe(real)["ball"]
    empty = np.full_like(real, 87)
    assert not W.object_agreement(real, empty)["ball"][has_ball].any()       # ball erased
    shifted = np.roll(real, 3, axis=1)                                        # everything 3 rows down
    moved = W.object_agreement(real, shifted)
    assert not moved["ball"][has_ball].any() and moved["player"].mean() < 0.2
