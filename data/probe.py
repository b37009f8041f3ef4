"""The Pong object probe: where are the ball and both paddles in an 84x84 frame?

Plain pixel MSE cannot tell a good Pong model from an empty screen; counting objects can. The
probe is checked against the emulator's RAM (validate_probe, tests/test_probe.py).

    from data.probe import probe, object_agreement, record_labelled, validate_probe
    p = probe(frames)                       # uint8 (N, 84, 84) -> dict of per-frame arrays
    ok = object_agreement(real, predicted)  # per-frame booleans: ball / player / opponent kept
    validate_probe(*record_labelled("Pong", 1500, seed=7))  # agreement with RAM labels, share of frames
"""
from __future__ import annotations

import numpy as np

# Pong's layout at 84x84 (DQN preprocessing): playfield rows 14..76, opponent paddle in columns
# 8-10, player paddle in 73-75, background grey ~87, paddles <= ~148, ball peak ~200-236.
PLAYFIELD = (14, 77)       # rows between the walls (the wall bands are rows 13 and 77)
PADDLE_COLS = {"opponent": (8, 11), "player": (73, 76)}
BALL_THRESHOLD = 0.6       # on the 0..1 scale, the ball is the only playfield object this bright (the
BALL_MIN = BALL_THRESHOLD * 255  # autoencoder's loss uses the same threshold: AEConfig.bright_threshold)
PADDLE_MIN = 0.41 * 255    # a paddle row's mean over its 3 columns exceeds this
BACKGROUND = 87.0          # the playfield's grey (uint8): the ball's centroid weighs what is above it
# A paddle away from the walls shows 6-13 visible rows on real frames (6-7 at rest, up to 12 when
# the max-pooled frame holds two positions, 13 when the opponent jumps at a serve); fewer only
# when partly behind a wall. Measured on 4,500 recorded frames (seeds 7, 11, 13).
PADDLE_ROWS = (6, 13)
BALL_MOVES_PX = 0.5        # a ball 'moves' when its centroid shifts this much between frames
BALL_Y_RANGE = (14.0, 76.0)  # the ball's centre row between the walls: it bounces at these
BALL_X_RANGE = (1.5, 83.0)   # the columns where a ball is seen (1.6-82.95 on 10,000 frames): past them it is out
# A ball past a paddle's face (FACES) seen beyond these columns shows no more the next frame; within them it shows
# once more: so on 4,016 of 4,035 such frames in 60,000 recorded (seeds 7100-7129, random and tracker play; beyond the
# paddles' columns, x < 7 or > 77: 2,201 of 2,220).
BALL_LAST_X = (3.3, 80.85)
FACES = (9.5, 73.5)        # the ball's x in the frame a paddle turns it at (9.5-10.7, 72.3-74.5 on 139 recorded turns)
# The ball's speeds, pixels per agent step, each direction: |dx| 2.10 (88 %) or 4.20 (5 %), |dy| 0.04, 1.59
# or 3.20 (8 / 59 / 28 %); 7.5 % (x) and 4.9 % (y) of steps, at bounces and serves, are none of these.
# Measured on 20,000 recorded frames of random and tracker play (seeds 7, 11).
BALL_SPEEDS = ((2.1, 4.2), (0.0, 1.6, 3.2))
UP, DOWN = 2, 3            # the ALE actions that move the player's paddle up (RIGHT) and down (LEFT)
UP_ACTIONS, DOWN_ACTIONS = (UP, 4), (DOWN, 5)   # with RIGHTFIRE and LEFTFIRE: after two of either kind in a row
                           # neither edge of the player's paddle moved against them (0 of 3,694 / 3,476 recorded steps)


def _drop_ball_fragments(on: np.ndarray, near_ball: np.ndarray, ball_y: np.ndarray) -> np.ndarray:
    """Drop short runs of paddle rows next to the ball: bool (N, R) -> bool (N, R).

    A ball passing a paddle's columns leaves dim edge pixels (below BALL_MIN) that pass the paddle
    threshold: a run of 1-2 rows at the ball's height. The paddle itself is one run of 3+ rows,
    or two (a max-pooled frame in which the paddle jumped), or a sliver at a wall away from the ball.
    near_ball (N,) bool: the ball is within 2 columns of this paddle; ball_y (N,) in field rows.
    """
    n, r = on.shape
    start = on & ~np.pad(on, ((0, 0), (1, 0)))[:, :-1]
    run = np.cumsum(start, 1) * on                                       # (N, R) run id, 0 = off
    key = (run + np.arange(n)[:, None] * (r + 1)).ravel()
    length = np.bincount(key, minlength=n * (r + 1)).reshape(n, r + 1)   # (N, R + 1) rows per run
    centre = np.bincount(key, np.tile(np.arange(r), n), n * (r + 1)).reshape(n, r + 1) / np.maximum(length, 1)
    fragment = (length <= 2) & (np.abs(centre - ball_y[:, None]) <= 2.5) & near_ball[:, None]
    fragment[:, 0] = False
    return on & ~np.take_along_axis(fragment, run, 1)


CHUNK = 2048  # frames probed at once


def probe(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Find the ball and both paddles in uint8 (N, 84, 84) Pong frames.

    Returns per frame: ball (bool), ball_y, ball_x (centroid, pixels), and for 'player' and
    'opponent': presence (bool), <name>_y (centre row of the visible paddle, NaN if none) and
    <name>_rows (visible rows: ~6-7 at rest, up to ~12 while moving, fewer behind a wall).
    A ball overlapping a wall band (rows 13 or 77) is not seen: ~0.1 % of frames (validate_probe).
    """
    if len(frames) > CHUNK:  # float copies of a long recording would cost 28 KB a frame: go in chunks
        parts = [probe(frames[i:i + CHUNK]) for i in range(0, len(frames), CHUNK)]
        return {k: np.concatenate([q[k] for q in parts]) for k in parts[0]}
    f = np.asarray(frames, dtype=np.float32)
    n, (top, bottom) = len(f), PLAYFIELD
    field = f[:, top:bottom]                                              # (N, 63, 84)
    flat = field.reshape(n, -1)
    peak_idx = flat.argmax(1)
    r, c = np.unravel_index(peak_idx, field.shape[1:])
    out = {"ball": flat.max(1) > BALL_MIN}
    # Centroid of the above-background mass in a 5x5 window around the peak.
    pad = np.pad(np.clip(field - BACKGROUND, 0, None), ((0, 0), (2, 2), (2, 2)))
    off = np.arange(5)
    win = pad[np.arange(n)[:, None, None], (r[:, None] + off)[:, :, None], (c[:, None] + off)[:, None, :]]  # (N, 5, 5)
    mass = win.sum((1, 2)) + 1e-6
    out["ball_y"] = r + (win.sum(2) * (off - 2)).sum(1) / mass + top
    out["ball_x"] = c + (win.sum(1) * (off - 2)).sum(1) / mass
    rows = np.arange(top, bottom)
    for name, (a, b) in PADDLE_COLS.items():
        g = field[:, :, a:b]
        g = np.where(g > BALL_MIN, BACKGROUND, g)          # a ball passing the paddle's columns is not paddle
        near = out["ball"] & (out["ball_x"] > a - 3) & (out["ball_x"] < b + 2)
        on = _drop_ball_fragments(g.mean(2) > PADDLE_MIN, near, out["ball_y"] - top)  # (N, 63)
        cnt = on.sum(1)
        out[name], out[name + "_rows"] = cnt > 0, cnt
        out[name + "_y"] = np.where(cnt > 0, (on * rows).sum(1) / np.maximum(cnt, 1), np.nan)
    return out


def compare_probes(pr: dict[str, np.ndarray], pp: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-frame comparison of a reference probe result `pr` (real frames, RAM labels) with `pp`.

    <obj> (bool): kept, by object_agreement's rules; <obj>_presence (bool): both have it or
    neither; <obj>_err (pixels, NaN unless both have it): ball centroid distance, paddle centre
    row difference.
    """
    out = {k + "_presence": pr[k] == pp[k] for k in ("ball", *PADDLE_COLS)}
    dist = np.hypot(pr["ball_x"] - pp["ball_x"], pr["ball_y"] - pp["ball_y"])
    out["ball"] = np.where(pr["ball"], pp["ball"] & (dist <= 2.0), ~pp["ball"])
    out["ball_err"] = np.where(pr["ball"] & pp["ball"], dist, np.nan)
    for k in PADDLE_COLS:
        err = np.abs(pr[k + "_y"] - pp[k + "_y"])                          # NaN where either lacks it
        out[k] = np.where(pr[k], pp[k] & (err <= 1.0), ~pp[k])
        out[k + "_err"] = err
    return out


def object_agreement(real: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame booleans: is each object where the real frame has it?

    ball: present in both within 2 px (centroid distance), or absent in both.
    player / opponent: paddle centre within 1 px, or absent in both.
    """
    c = compare_probes(probe(real), probe(pred))
    return {k: c[k] for k in ("ball", *PADDLE_COLS)}


def paddle_intact(p: dict[str, np.ndarray], name: str) -> np.ndarray:
    """bool (N,): probe result p shows paddle `name` as a plausible block: PADDLE_ROWS visible rows,
    or fewer while it touches a wall."""
    rows, y = p[name + "_rows"], p[name + "_y"]
    top, bottom = PLAYFIELD[0] + 0.5, PLAYFIELD[1] - 1.5
    at_wall = (y - (rows - 1) / 2 <= top) | (y + (rows - 1) / 2 >= bottom)
    return p[name] & (rows <= PADDLE_ROWS[1]) & ((rows >= PADDLE_ROWS[0]) | at_wall)


def returned_ball(pr: dict[str, np.ndarray], episode: np.ndarray) -> np.ndarray:
    """bool (N,): the frame's ball moved toward the opponent (left, >= BALL_MOVES_PX) since the
    previous frame of its episode: a ball the player returned. pr: probe() of N consecutive frames."""
    same = np.r_[False, episode[1:] == episode[:-1]]
    return pr["ball"] & np.r_[False, pr["ball"][:-1]] & same & (np.r_[0.0, np.diff(pr["ball_x"])] < -BALL_MOVES_PX)

# ------------------------------------------------------------------------------------ RAM labels
# Where Pong draws its objects on the raw 210x160 screen, given the RAM (AtariARI indices), measured
# on raw ALE screens (>= 99.9 % exact): ball rows y-15..y-11 (the top row varies by one), column
# x-49 (2 wide), hidden while y == 0; opponent rows y-15..y; player rows from (y-13)//2*2, 16 tall
# (drawn on even rows). Objects are only visible between the walls, raw rows 34..193.
RAM = {"ball_x": 49, "ball_y": 54, "player_y": 51, "opponent_y": 50}
RAW_FIELD = (34, 193)
RAW_TO_84 = (210 / 84, 160 / 84)       # raw pixels per 84x84 pixel: rows, columns


def ram_labels(ram: np.ndarray) -> dict[str, np.ndarray]:
    """What the RAM says an observation shows, in the probe's units: uint8 (N, 2, 128) -> dict.

    ram[:, j] is the RAM after each raw frame that AtariPreprocessing max-pools into the observation
    (the last two of its 4 skipped frames): an object shows where it was in either. A (N, 128) RAM
    (read after the step, as record() stores it) is treated as both; it misses the earlier pooled
    frame, so moving objects get labels off by up to a frame's motion.
    """
    r = np.asarray(ram, dtype=np.int64)
    r = np.stack([r, r], 1) if r.ndim == 2 else r                        # (N, 2, 128)
    lo, hi = RAW_FIELD
    y, x = r[:, :, RAM["ball_y"]], r[:, :, RAM["ball_x"]]                  # (N, 2)
    vis = (y > 0) & (y - 11 >= lo) & (y - 15 <= hi) & (x >= 49) & (x <= 208)
    w = vis.astype(np.float64)
    cnt = np.maximum(w.sum(1), 1)
    out = {"ball": vis.any(1)}
    # Centres in 84-pixel units: raw row i spans [i, i + 1); an 84 row j spans raw [2.5 j, 2.5 (j + 1)).
    by = np.clip(y - 12.5, lo, hi + 1) / RAW_TO_84[0] - 0.5                 # (N, 2) centre row of the visible part
    out["ball_y"] = np.where(out["ball"], (w * by).sum(1) / cnt, np.nan)
    out["ball_x"] = np.where(out["ball"], (w * ((x - 48) / RAW_TO_84[1] - 0.5)).sum(1) / cnt, np.nan)
    raw_rows = np.arange(lo, hi + 1)                                      # (160,)
    for name in ("player", "opponent"):
        py = r[:, :, RAM[name + "_y"]][:, :, None]                        # (N, 2, 1)
        first = (py - 13) // 2 * 2 if name == "player" else py - 15
        shown = ((raw_rows >= first) & (raw_rows <= first + 15)).any(1)   # (N, 160): union of both frames
        cnt = shown.sum(1)
        out[name] = cnt >= 2        # a one-raw-row sliver averages below the probe's threshold
        centre = (shown * (raw_rows + 0.5)).sum(1) / np.maximum(cnt, 1)
        out[name + "_y"] = np.where(out[name], centre / RAW_TO_84[0] - 0.5, np.nan)
    return out


def validate_probe(frames: np.ndarray, ram: np.ndarray) -> dict[str, float]:
    """Share of frames on which the probe agrees with the RAM labels, by object_agreement's rules.

    frames uint8 (N, 84, 84); ram uint8 (N, 2, 128) from record_labelled (exact) or (N, 128).
    ball: presence agrees and, if present, centroid within 2 px; paddles: presence agrees and centre
    within 1 px. Also the presence-only shares and the median position errors (pixels).
    """
    c = compare_probes(ram_labels(ram), probe(frames))
    out = {"frames": len(frames)}
    for k in ("ball", *PADDLE_COLS):
        e = c[k + "_err"]
        out[k] = float(c[k].mean())
        out[k + "_presence"] = float(c[k + "_presence"].mean())
        out[k + "_err_px_median"] = float(np.nanmedian(e)) if np.isfinite(e).any() else float("nan")
    return out


def record_labelled(game: str = "Pong", steps: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random play with the RAM of both pooled raw frames: frames uint8 (N, 84, 84), ram uint8 (N, 2, 128).

    record() reads the RAM once per agent step, after the last raw frame; the observation is the
    max of the last two raw frames, so a ball that vanished or a paddle that moved on the last
    one still shows. Labelling the frame needs both RAMs (measured on seed 7: player paddle
    agreement 72 % with the one RAM, 99 % with both).
    """
    import gymnasium as gym

    from data.d4rl_frames import make_env

    class RamLog(gym.Wrapper):   # between the emulator and the frame skip: sees every raw frame
        def __init__(self, env):
            super().__init__(env)
            self.last = [None, None]

        def step(self, action):
            res = self.env.step(action)
            self.last = [self.last[1], self.unwrapped.ale.getRAM().copy()]
            return res

        def reset(self, **kw):
            res = self.env.reset(**kw)
            self.last = [None, self.unwrapped.ale.getRAM().copy()]
            return res

    env = make_env(game, inner=RamLog)
    log = env.env                                                              # the RamLog under the frame skip
    rng = np.random.default_rng(seed)
    frames = np.empty((steps, 84, 84), np.uint8)
    ram = np.empty((steps, 2, 128), np.uint8)
    obs, _ = env.reset(seed=seed)
    fresh = True   # after a reset the observation is one raw frame (the other pooled buffer is zeros)
    for t in range(steps):
        frames[t] = obs
        ram[t, 0] = log.last[1] if fresh else log.last[0]
        ram[t, 1] = log.last[1]
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        fresh = terminated or truncated
        if fresh:
            obs, _ = env.reset()
    env.close()
    return frames, ram
