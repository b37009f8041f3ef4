"""The Pong object probe: where are the ball and both paddles in an 84x84 frame?

Plain pixel MSE cannot tell a good Pong model from an empty screen; counting objects can. The
probe is validated against the emulator's RAM in tests/test_probe.py.

    from data.probe import probe, object_agreement
    p = probe(frames)                       # uint8 (N, 84, 84) -> dict of per-frame arrays
    ok = object_agreement(real, predicted)  # per-frame booleans: ball / player / opponent kept
"""
from __future__ import annotations

import numpy as np

# Pong's layout at 84x84 (DQN preprocessing): playfield rows 14..76, opponent paddle in columns
# 8-10, player paddle in 73-75, background grey ~87, paddles <= ~148, ball peak ~200-236.
PLAYFIELD = (14, 77)
PADDLE_COLS = {"opponent": (8, 11), "player": (73, 76)}
BALL_MIN = 0.6 * 255       # the ball is the only playfield object this bright
PADDLE_MIN = 0.41 * 255    # a paddle row's mean over its 3 columns exceeds this


def probe(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Find the ball and both paddles in uint8 (N, 84, 84) Pong frames.

    Returns per frame: ball (bool), ball_y, ball_x (centroid, pixels), and for 'player' and
    'opponent': presence (bool), <name>_y (centre row of the visible paddle, NaN if none) and
    <name>_rows (visible rows: ~8 at rest, more while moving, fewer when half behind a wall).
    Validated against the emulator's RAM in tests/test_probe.py.
    """
    f = np.asarray(frames, dtype=np.float32)
    n, (top, bottom) = len(f), PLAYFIELD
    field = f[:, top:bottom]                                              # (N, 63, 84)
    flat = field.reshape(n, -1)
    peak_idx = flat.argmax(1)
    r, c = np.unravel_index(peak_idx, field.shape[1:])
    out = {"ball": flat.max(1) > BALL_MIN}
    # Centroid of the above-background mass in a 5x5 window around the peak.
    pad = np.pad(np.clip(field - 87.0, 0, None), ((0, 0), (2, 2), (2, 2)))
    off = np.arange(5)
    win = pad[np.arange(n)[:, None, None], (r[:, None] + off)[:, :, None], (c[:, None] + off)[:, None, :]]  # (N, 5, 5)
    mass = win.sum((1, 2)) + 1e-6
    out["ball_y"] = r + (win.sum(2) * (off - 2)).sum(1) / mass + top
    out["ball_x"] = c + (win.sum(1) * (off - 2)).sum(1) / mass
    rows = np.arange(top, bottom)
    for name, (a, b) in PADDLE_COLS.items():
        g = field[:, :, a:b]
        g = np.where(g > BALL_MIN, 87.0, g)          # a ball passing the paddle's columns is not paddle
        on = g.mean(2) > PADDLE_MIN                   # (N, 63)
        cnt = on.sum(1)
        out[name], out[name + "_rows"] = cnt > 0, cnt
        out[name + "_y"] = np.where(cnt > 0, (on * rows).sum(1) / np.maximum(cnt, 1), np.nan)
    return out


def object_agreement(real: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame booleans: is each object where the real frame has it?

    ball: present in both within 2 px (centroid distance), or absent in both.
    player / opponent: paddle centre within 1 px, or absent in both.
    """
    pr, pp = probe(real), probe(pred)
    dist = np.hypot(pr["ball_x"] - pp["ball_x"], pr["ball_y"] - pp["ball_y"])
    ok = {"ball": np.where(pr["ball"], pp["ball"] & (dist <= 2.0), ~pp["ball"])}
    for k in PADDLE_COLS:
        err = np.abs(pr[k + "_y"] - np.nan_to_num(pp[k + "_y"], nan=-1e3))
        ok[k] = np.where(pr[k], pp[k] & (err <= 1.0), ~pp[k])
    return ok
