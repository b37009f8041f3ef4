"""Neural-Atari Regen: a world model of Atari Pong you can train on a laptop CPU in under two minutes.

An autoencoder squeezes each 84x84 grey frame into a 128-D latent whose first 7 numbers are the
ball's and the paddles' coordinates; a predictor maps the last K latents and the player's actions
to the next latent; rolled out open loop it dreams the game.

    python world_model.py                                  # record frames, train both, write assets/
    python world_model.py ae.steps=800 pred.steps=3000     # dot-notation overrides of Config
    python world_model.py --config my.yaml optim.lr=3e-4   # a YAML file first, then overrides
    python world_model.py --show-config                    # every field of Config (config.py): value, allowed, meaning
    python world_model.py data.source=data/pong            # train on a recorded dataset (python -m data.d4rl_frames)
    python world_model.py --resume runs/<run>              # continue a stopped run where it stopped
    torchrun --nproc_per_node=2 world_model.py [overrides]   # data parallel: each process a share of every batch
    python world_model.py eval                             # measure the newest run on fresh held-out play (evaluate.py)
    python world_model.py play                             # play inside the newest run's dream (play.py)

    from world_model import WorldModel
    wm = WorldModel.load("runs/<run>/checkpoints/last.pt")
    wm.rollout(context, actions)                           # uint8 (K, 84, 84), int (H,) -> uint8 (H, 84, 84)
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from config import (NC, PHASES, SMALL_BUDGET, AEConfig, Config, DataConfig, EvalConfig, ExperimentConfig,  # noqa: F401
                    HeldoutConfig, ModelConfig, OptimConfig, PredConfig, TrainConfig, WandbConfig, make_config,
                    pick_device, show_config, train_device)
from data import Parser, UsageError, peak_rss_mb
from data.d4rl_frames import FrameData, Recording, record_sets
from data.probe import (BACKGROUND, BALL_LAST_X, BALL_MIN, BALL_SPEEDS, BALL_X_RANGE, BALL_Y_RANGE, DOWN_ACTIONS, FACES, PADDLE_COLS, PADDLE_ROWS,
                        PLAYFIELD, UP_ACTIONS, object_agreement, probe, returned_ball)
from hardware import Precision, data_parallel, my_part, one_thread, rank_world, shared, start_distributed
from outputs import (Meter, Run, checkpoint_config, end_of_step, evenly, latest_checkpoint,  # noqa: F401 (W.*)
                     panels, read_checkpoint, restore, strip, which_checkpoint, write_checkpoint)


# ------------------------------------------------------------------------------------ models

# The latent's head holds Pong's objects as coordinates in pixels (the probe's units, data/probe.py):
# ball x, y and presence (a logit), the player's and the opponent's paddle top and bottom edges.
# The rest of the latent (G = latent_dim - 7 dims) is a global code: score, walls, anything else.
BX, BY, BP, PT, PB, OT, OB = range(7)
POS = [BX, BY, PT, PB, OT, OB]             # the positional dims
FIELD = (PLAYFIELD[0] - 0.5, PLAYFIELD[1] - 0.5)   # the playfield's edges: rows 14..76 span [13.5, 76.5]
CENTRE = (42.0, 45.0)                      # where an absent ball's coordinates are put (the field's middle)
# A serve seen in training: where it showed (y normalised, x), its first step / 2, the frames without a ball before
# it, where the ball was last seen before those, and the opponent's centre when it showed (Pong puts it mid-field).
SERVE_COLS = ("y0", "vx/2", "vy/2", "gap", "x0", "x_out", "opponent_y")
SERVE_MATCH_PX = 1.0                       # a just-served ball this near a training serve's first position flies as it did
PHASE_FRAMES = 16                          # a serve's frame phase is read from up to this many frames of its path (serve_of)
MIDFIELD = (14, 68)                        # the ball's x away from the paddles: it flies straight there, it turns only beyond


def object_labels(p: dict[str, np.ndarray]) -> np.ndarray:
    """probe() results -> float32 (N, 7) coordinate targets: ball x, y (CENTRE where absent), presence
    0/1, each paddle's top and bottom edge (a paddle hidden behind the top wall: both at the edge)."""
    out = np.zeros((len(p["ball"]), NC), np.float32)
    out[:, BX] = np.where(p["ball"], p["ball_x"], CENTRE[0])
    out[:, BY] = np.where(p["ball"], p["ball_y"], CENTRE[1])
    out[:, BP] = p["ball"]
    for k, (t, b) in (("player", (PT, PB)), ("opponent", (OT, OB))):
        y, rows = np.nan_to_num(p[k + "_y"]), p[k + "_rows"]
        out[:, t] = np.where(p[k], y - rows / 2, FIELD[0])
        out[:, b] = np.where(p[k], y + rows / 2, FIELD[0])
    return out


def coverage(c: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, n: int = 84) -> torch.Tensor:
    """Share of each pixel [i - 0.5, i + 0.5] inside [c + lo, c + hi]: (B,) -> (B, n). Anti-aliased and
    differentiable, so a drawn edge moves smoothly with its coordinate."""
    i = torch.arange(n, device=c.device, dtype=c.dtype)
    a, b = (c + lo)[:, None], (c + hi)[:, None]
    return (torch.minimum(i + 0.5, b) - torch.maximum(i - 0.5, a)).clamp(0, 1)


def ball_centroid(frames: torch.Tensor, bx: torch.Tensor, by: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, 84, 84) frames and the encoder's ball estimate (B,), (B,) -> the ball's centroid near it (B,), (B,):
    the brightest playfield pixel within 4 px of the estimate and the above-background mass in the 5x5 window around
    it, as the probe measures the ball (data/probe.py); the estimate where no pixel there is the ball's bright."""
    B, top, bottom = len(frames), *PLAYFIELD
    i = torch.arange(B, device=frames.device)[:, None, None]
    def window(r: torch.Tensor, c: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        off = torch.arange(n, device=frames.device) - n // 2
        rr, cc = r[:, None, None] + off[:, None], c[:, None, None] + off                  # (B, n, 1), (B, 1, n)
        inside = (rr >= top) & (rr < bottom) & (cc >= 0) & (cc < 84)                      # (B, n, n)
        v = frames[i, rr.clamp(top, bottom - 1), cc.clamp(0, 83)].float()
        return torch.where(inside, v, 0.0), rr, cc
    v, rr, cc = window(by.round().long().clamp(top, bottom - 1), bx.round().long().clamp(0, 83), 9)   # (B, 9, 9)
    peak = v.flatten(1).argmax(1)                                                         # (B,)
    found = v.flatten(1).amax(1) > BALL_MIN
    r, c = rr[:, :, 0].gather(1, (peak // 9)[:, None])[:, 0], cc[:, 0].gather(1, (peak % 9)[:, None])[:, 0]
    m, rr, cc = window(r, c, 5)
    m = (m - BACKGROUND).clamp(min=0)                                                     # (B, 5, 5) the probe's mass
    mass = m.sum((1, 2)) + 1e-6
    y = r + (m.sum(2) * (rr[:, :, 0] - r[:, None])).sum(1) / mass
    x = c + (m.sum(1) * (cc[:, 0] - c[:, None])).sum(1) / mass
    return torch.where(found, x, bx), torch.where(found, y, by)


class Autoencoder(nn.Module):
    """84x84 uint8 frame -> 128-D latent (object coordinates + global code) -> frame.

    Encoder: pixel-unshuffle turns the frame into a 21x21x16 map losslessly (the ball's exact pixel
    survives the stem cheaply), a 3x3 convolution, then per object a spatial softmax over the 441
    cells (a learnable gain sharpens it) with a sub-cell offset gives its expected position (the
    ball's, outside training, then refined on the frame itself: ball_centroid); the
    ball's presence is the max of a logit map; a strided convolution and a linear layer over the
    map's top rows (the score band) give the global code. Decoder: the objects are drawn where their
    coordinates say (the ball an anti-aliased box, each paddle a learned column profile between its
    edges), over the static background (the median training frame) plus what the global code
    decodes to in the score band: the rest of a Pong screen never changes, so the global code
    cannot paint noise there. A ball at a position never seen is still a ball, and motion in the
    latent is arithmetic on coordinates.
    """

    HEAD = 12   # channels: ball logit, dx, dy, presence logit; 4 paddle edges x (logit, dy)

    def __init__(self, latent_dim: int = 128, width: int = 48, global_width: int = 16, gain: float = 10.0,
                 objects: bool = True):
        super().__init__()
        W, self.gw, self.G, self.objects = width, global_width, latent_dim - NC, objects
        self.register_buffer("background", torch.zeros(84, 84))  # per-pixel median of training frames, 0..1
        # GroupNorm: measurably faster learning in a short budget, batch-size independent.
        self.stem = nn.Sequential(nn.PixelUnshuffle(4), nn.Conv2d(16, W, 3, 1, 1), nn.GroupNorm(8, W), nn.GELU())
        self.head = nn.Conv2d(W, self.HEAD, 3, 1, 1)
        self.log_gain = nn.Parameter(torch.tensor(float(np.log(gain))))
        # The global code reads and paints only the unshuffled rows that hold the score band (Pong: 4 of 21,
        # pixel rows 0..15; another game: all 21): the rest of a Pong screen is the objects' (2/3 of the
        # autoencoder's time went to a global code whose other rows the band masked away).
        self.rows = -(-(PLAYFIELD[0] - 1) // 4) if objects else 21
        self.gh = gh = (self.rows + 1) // 2                                  # their rows after the strided conv
        self.down = nn.Sequential(nn.Conv2d(W, W, 3, 2, 1), nn.GroupNorm(8, W), nn.GELU())   # (B, W, gh, 11)
        self.to_global = nn.Linear(W * gh * 11, self.G)
        cell = torch.arange(21, dtype=torch.float32) * 4 + 1.5                             # cell centres, pixels
        self.register_buffer("cell_y", cell[:, None].expand(21, 21).reshape(-1).clone())  # (441,)
        self.register_buffer("cell_x", cell[None, :].expand(21, 21).reshape(-1).clone())
        self.fc = nn.Linear(self.G, self.gw * gh * 11)
        self.decoder = nn.Sequential(
            nn.GroupNorm(8, self.gw), nn.GELU(),
            nn.ConvTranspose2d(self.gw, self.gw, 3, 2, 1, output_padding=(self.rows - 2 * gh + 1, 0)),  # (B, gw, rows, 21)
            nn.GroupNorm(8, self.gw), nn.GELU(), nn.Conv2d(self.gw, 16, 3, 1, 1), nn.PixelShuffle(4))  # (B, 1, 4 rows, 84)
        # The paint starts at zero: the band starts as the median frame's, not as noise that 500 steps of a loss
        # weighted to the objects never wash out (reconstructed digits were grainy, a 2 drawn as an 8).
        nn.init.zeros_(self.decoder[-2].weight)
        nn.init.zeros_(self.decoder[-2].bias)
        band = torch.zeros(84, 84) if objects else torch.ones(84, 84)
        band[:PLAYFIELD[0] - 1] = 1.0        # the score band, above the top wall: all that changes but the objects
        # (a game without Pong's objects: the global code paints the whole frame, the coordinates stay unused)
        self.register_buffer("band", band)
        self.ball_amp = nn.Parameter(torch.tensor(0.58))                 # the ball's brightness over the background
        self.ball_half = nn.Parameter(torch.tensor([0.8, 1.0]))          # its half width and half height, pixels
        self.paddle_cols = nn.Parameter(torch.tensor([[0.12, 0.23, 0.14], [0.14, 0.24, 0.12]]))  # player, opponent
        self.cols = (PADDLE_COLS["player"][0], PADDLE_COLS["opponent"][0])

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.float().div(255).unsqueeze(1) - self.background  # uint8 (B, 84, 84) -> (B, 1, 84, 84)
        f = self.stem(x)                                             # (B, W, 21, 21)
        h = self.head(f).flatten(2)                                  # (B, 12, 441)
        gain = self.log_gain.exp()
        w = torch.softmax(h[:, 0] * gain, -1)                        # (B, 441) where the ball is
        # Offsets up to 3 px from a 4-px cell's centre: neighbouring cells overlap, so no position sits at
        # the edge of both (with 2 px, one training seed in three ended with its ball 0.3 px off).
        bx = (w * (self.cell_x + 3 * torch.tanh(h[:, 1]))).sum(-1)   # (B,)
        by = (w * (self.cell_y + 3 * torch.tanh(h[:, 2]))).sum(-1)
        if self.objects and not self.training:
            bx, by = ball_centroid(frames, bx, by)
        edges = []
        for j in range(4):
            w = torch.softmax(h[:, 4 + 2 * j] * gain, -1)
            edges.append((w * (self.cell_y + 2.5 * torch.tanh(h[:, 5 + 2 * j]))).sum(-1))
        g = self.to_global(self.down(f[:, :, :self.rows]).flatten(1))   # (B, G)
        return torch.cat([torch.stack([bx, by, h[:, 3].amax(-1), *edges], 1), g], 1)   # (B, D)

    def render(self, c: torch.Tensor) -> torch.Tensor:
        """Coordinates (B, 7) -> the objects drawn on zeros (B, 84, 84)."""
        hx, hy = self.ball_half[0], self.ball_half[1]
        ball = coverage(c[:, BY], -hy, hy)[:, :, None] * coverage(c[:, BX], -hx, hx)[:, None, :]   # (B, 84, 84)
        out = self.ball_amp * torch.sigmoid(c[:, BP])[:, None, None] * ball
        zero = torch.zeros_like(c[:, 0])
        for k, (t, b) in enumerate(((PT, PB), (OT, OB))):
            lo = c[:, t].clamp(*FIELD)
            rows = coverage(zero, lo, torch.maximum(c[:, b].clamp(*FIELD), lo))          # (B, 84)
            col = torch.zeros(84, device=c.device, dtype=c.dtype).index_put(
                (torch.arange(3, device=c.device) + self.cols[k],), self.paddle_cols[k])  # (84,)
            out = out + rows[:, :, None] * col
        return out

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z[:, NC:]).view(-1, self.gw, self.gh, 11)                  # (B, gw, gh, 11)
        paint = F.pad(self.decoder(h).squeeze(1), (0, 0, 0, 84 - 4 * self.rows))  # (B, 84, 84): zeros below
        out = self.background + self.band * paint
        return out + self.render(z[:, :NC]) if self.objects else out

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, 84, 84) -> reconstruction (B, 84, 84), latent (B, D)."""
        z = self.encode(frames)
        return self.decode(z), z


class Predictor(nn.Module):
    """Next latent from the last K latents, the actions taken at them and a serve input u.

    Inputs: the K frames' object coordinates (normalised; an absent ball at the field's centre) and
    ball presence, their differences from frame to frame (velocities; the ball's only where both
    frames show it), one-hot actions (-1, unknown: zeros), a projection of the last global code, and
    u (4): while the ball is out, where and in how many frames it will be served; on the step after
    it appears, its velocity. Training takes u from the recording; a dream takes it from the serves
    seen in training (WorldModel.start, next_serve: Pong serves from the centre at one of a few
    angles, an average would be a frozen ball). Outputs, each as a residual whose last layer starts
    at zero: the ball moves on at its velocity (in midfield the window's mean step when all agree in
    sign: less encoder noise), snapped to the nearest of Pong's ball speeds (BALL_SPEEDS,
    data/probe.py) when within 0.4 px, plus a residual (in 4-px units). Where that step would cross a
    wall the ball stops at it for a frame, as Pong's does, and leaves it mirrored. At a paddle's face (FACES) a turn logit decides, hard, whether
    its horizontal step reverses (a return) or goes on (a miss): trained as a classifier on the
    recorded turns, so a dream picks one instead of hedging between the two. Outside training, near a wall or
    a paddle the ball instead takes the step that followed the 3 most similar windows of the training frames
    (ball_key, ball_steps: a table kept in the checkpoint), where those are alike. Each paddle's centre is
    the last one plus a residual, its height 7 rows plus a residual (absolute, so it cannot drift); outside
    training the opponent's edges instead take the step that followed the 3 most similar training windows
    (opp_key, opp_steps: Pong's opponent is the game's program, and it climbs and hides between points), and the
    player's edges the step that followed the most similar training windows' steps and actions (play_key, play_steps:
    the paddle answers the actions with a lag and coasts, and its steps alias on the 84-row screen by where it is);
    presence is a logit; the global code the last one plus a residual; a dream draws the nearest of
    512 codes of training frames (the score band it shows stays a real one).

    Past actions matter: in Pong the paddle's move into frame t+1 follows the action at t-1 more
    than the one at t (measured correlation 0.67 vs 0.54).
    """

    SCALE = 20.0      # pixels per normalised coordinate unit
    BALL_RES = 4.0    # pixels per unit of the ball's residual: it is a correction, the base does the moving

    def __init__(self, latent_dim: int, context: int, num_actions: int, hidden: int, action_conditioned: bool,
                 global_proj: int = 16):
        super().__init__()
        K, A, G = context, num_actions, latent_dim - NC
        self.context, self.num_actions, self.action_conditioned = K, A, action_conditioned
        self.register_buffer("gmean", torch.zeros(G))   # global-code statistics of the training frames
        self.register_buffer("gstd", torch.ones(G))
        self.register_buffer("serves", torch.tensor([[0.0, 0.9, 0.65, 15.0, CENTRE[0], 81.9, 48.0]]))  # (S, 7): SERVE_COLS
        self.register_buffer("codes", torch.zeros(1, G))  # (M, G) normalised global codes of training frames
        self.register_buffer("step_keys", torch.zeros(0, len(STEP_KEY)))   # (N, 9) ball_key of training windows
        self.register_buffer("steps", torch.zeros(0, 2))                 # (N, 2) the ball's next step after each
        self.register_buffer("gap_keys", torch.zeros(0, 2 * K))          # (M, 2K) gap_key of ball-less training windows
        self.register_buffer("gap_waits", torch.zeros(0))                # (M,) the frames until the serve after each
        self.register_buffer("gap_serves", torch.zeros(0, 4))            # (M, 4) that serve's first x, y and step
        self.register_buffer("opp_keys", torch.zeros(0, len(OPP_KEY)))   # (N, 8) opp_key of training windows
        self.register_buffer("opp_steps", torch.zeros(0, 2))             # (N, 2) the opponent's edges' next step after each
        self.register_buffer("opp_counts", torch.zeros(0))               # (N,) how many training windows had that row
        self.register_buffer("opp_weights", torch.tensor(OPP_KEY))      # (8,) the weights opp_keys were built with
        self.register_buffer("opp_next", torch.tensor(True))            # () ... and with the next frame's ball (opp_key)
        self.register_buffer("play_keys", torch.zeros(0, len(PLAY_KEY)))  # (N, 9) play_key of training windows
        self.register_buffer("play_steps", torch.zeros(0, 2))            # (N, 2) the player's edges' next step after each
        self.register_buffer("play_counts", torch.zeros(0))              # (N,) how many training windows had that row
        self.register_buffer("play_weights", torch.tensor(PLAY_KEY))    # (9,) the weights play_keys were built with
        direction = torch.tensor([0.0, *PONG_DIRECTION]) if A == len(PONG_DIRECTION) else torch.zeros(A + 1)
        self.register_buffer("direction", direction, persistent=False)  # (A + 1,) each action's vertical sense; -1: 0
        self.register_buffer("centre", torch.tensor([CENTRE[0], *[CENTRE[1]] * 5]), persistent=False)  # (6,) of POS
        # Constant tensors that let the forward treat x and y (and all six positions) in one operation each:
        # fewer, larger operations (a training step is bound by their count, on a CPU and on a GPU alike).
        self.register_buffer("eye", torch.cat([torch.zeros(1, A), torch.eye(A)]), persistent=False)  # (A + 1, A): -1 -> 0s
        self.register_buffer("ycol", torch.tensor([False, True]), persistent=False)               # (2,) the y column
        self.register_buffer("xcol", torch.tensor([True, False]), persistent=False)
        self.register_buffer("ballcol", torch.tensor([1.0, 1, 0, 0, 0, 0]), persistent=False)      # (6,) of POS
        self.register_buffer("bpcol", torch.arange(NC) == BP, persistent=False)                   # (7,) the presence
        lo, hi = BALL_Y_RANGE
        self.register_buffer("lo", torch.tensor([-math.inf, lo]), persistent=False)              # (2,) x has no wall
        self.register_buffer("hi", torch.tensor([math.inf, hi]), persistent=False)
        n = max(map(len, BALL_SPEEDS))
        speeds = torch.tensor([list(v) + [math.inf] * (n - len(v)) for v in BALL_SPEEDS])          # (2, n), inf-padded
        self.register_buffer("speeds", speeds, persistent=False)
        self.gp = nn.Linear(G, global_proj)
        n_in = K * NC + (K - 1) * 6 + (K * A if action_conditioned else 0) + global_proj + 4
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.out = nn.Linear(hidden, NC + G + 1)   # coordinates, global code, the turn logit
        nn.init.zeros_(self.out.weight)   # starts as 'constant velocity, nothing else moves, no turn'
        nn.init.zeros_(self.out.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("serves", "codes", "step_keys", "steps", "gap_keys", "gap_waits", "gap_serves", "opp_keys", "opp_steps",
                     "opp_counts", "play_keys", "play_steps", "play_counts"):   # lengths: the training data's
            if prefix + name not in state_dict and name.startswith(("step", "gap", "opp", "play")):   # older: no table
                state_dict[prefix + name] = getattr(self, name)
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=self.gmean.device))
        state_dict.setdefault(prefix + "opp_weights", torch.tensor(OPP_KEY_V1))  # older: the weights its table was built with
        state_dict.setdefault(prefix + "opp_next", torch.tensor(False))          # older: the last frame's ball
        state_dict.setdefault(prefix + "play_weights", torch.tensor(PLAY_KEY))   # older: no player's table
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, c: torch.Tensor, g: torch.Tensor, actions: torch.Tensor, u: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """c (B, K, 7) coordinates (pixels, presence 0/1), g (B, G) normalised global code of the last
        frame, actions (B, K) int (-1 unknown), u (B, 4) -> next coordinates (B, 7) with the presence
        as a logit, next normalised global code (B, G), the turn (B, 3): its logit, 1 where the ball
        is at a paddle's face (where the logit acts), and 1 where the step table says the ball hides in a wall next
        (outside training; WorldModel.dream_step acts on it)."""
        pres = c[:, :, BP]                                                     # (B, K) 0/1
        xy = torch.where(pres[..., None] > 0.5, c[..., :BP], self.centre[:2])    # (B, K, 2) an absent ball sits at the centre
        posn = (torch.cat([xy, c[..., BP + 1:]], -1) - self.centre) / self.SCALE   # (B, K, 6): POS, normalised
        both = pres[:, 1:] * pres[:, :-1]                                      # (B, K - 1) the ball in both frames
        vel = (posn[:, 1:] - posn[:, :-1]) * (both[..., None] * self.ballcol + (1 - self.ballcol))   # (B, K - 1, 6)
        parts = [posn.flatten(1), pres, vel.flatten(1)]
        if self.action_conditioned:
            parts.append(self.eye[actions.long() + 1].flatten(1))             # (B, K * A) one-hot, unknown: zeros
        r = self.out(self.net(torch.cat([*parts, self.gp(g), u], 1)))        # (B, 7 + G)
        # The ball: constant velocity, mirrored at the walls, plus a residual.
        step = xy[:, 1:] - xy[:, :-1]                                          # (B, K - 1, 2)
        v = step[:, -1] * both[:, -1:]
        straight = ((step * step[:, -1:]) > 0).all(1) & (both > 0.5).all(1, keepdim=True)
        x0 = xy[:, -1]                                                         # (B, 2) the last position
        midfield = (x0[:, :1] > MIDFIELD[0]) & (x0[:, :1] < MIDFIELD[1])       # away from the paddles, where it may turn
        v = torch.where(straight & midfield, step.mean(1), v)
        # Near a wall the last step is no speed (a bounce folds it; the wall hides part of the ball): there
        # the ball keeps the window's largest vertical speed, in the last step's direction.
        yy = xy[:, -2:, 1]
        near = ((yy - BALL_Y_RANGE[0]).amin(1) < 3.5) | ((BALL_Y_RANGE[1] - yy).amin(1) < 3.5)
        vy = (step[:, :, 1] * both).abs().amax(1) * torch.sign(v[:, 1])
        v = torch.where(near[:, None] & self.ycol, vy[:, None], v)
        # Pong's ball moves at a few speeds only: snapped to the nearest, the base no longer carries the
        # encoder's ~0.1 px noise forward (it grew by that every step of a dream).
        v = snap_speed(v, self.speeds)
        # Past a paddle's face and flying out, the ball keeps one of Pong's x speeds, whatever its last step (a table
        # step at the face can be short, and a short step carried on had the dream's ball leave up to 4 frames late).
        # Outside training only, as the table: in training it raised the held-out one-step loss (0.72 -> 0.81).
        if not self.training:
            out = flying_out(x0[:, 0], v[:, 0])
            v = torch.where(out[:, None] & self.xcol, snap_speed(v[:, 0], self.speeds[0], math.inf)[:, None], v)
        # At a paddle's face (the step would carry the ball past the column where Pong turns it, and it is not
        # past it yet) the turn logit decides: back at its speed, or on.
        xv = x0[:, 0] + v[:, 0]
        face = (((xv >= FACES[1] + 1) & (x0[:, 0] <= FACES[1] + 2) & (v[:, 0] > 0))
                | ((xv <= FACES[0] - 0.5) & (x0[:, 0] >= FACES[0] - 1.5) & (v[:, 0] < 0))) & (pres[:, -1] > 0.5)
        turn = r[:, -1]
        p = x0 + torch.where((face & (turn > 0))[:, None] & self.xcol, -v, v)  # (B, 2)
        # A step that would cross a wall ends at it (the ball shows at the wall for a frame); from the wall it
        # leaves mirrored. (x has walls at -inf and inf.)
        lo, hi = self.lo, self.hi
        at = (x0 - lo < 0.6) | (hi - x0 < 0.6)
        p = torch.where(p < lo, torch.where(at, 2 * lo - p, lo), torch.where(p > hi, torch.where(at, 2 * hi - p, hi), p))
        ball = torch.where(pres[:, -1:] > 0.5, p, self.centre[:2]) + self.BALL_RES * r[:, :BP]
        # Near a wall or a paddle, a ball seen in the last three frames takes the step that followed the most similar
        # training windows (ball_key: its last two steps, how near a wall, a paddle's face and that paddle's centre):
        # Pong's bounces depend on sub-pixel phase and on where the paddle meets the ball, which the rules above
        # miss. Not while training: there it would find each window itself, and the search would slow loop 2 ~2x.
        hide = torch.zeros_like(x0[:, 0])                                      # (B,) 1: the ball hides in a wall next
        if len(self.steps) >= STEP_NEIGHBOURS and c.shape[1] >= 3 and not self.training:   # (a table of fewer: the rules)
            with torch.no_grad():                                              # an index: nothing to learn through
                key, seen = ball_key(c[:, -3:])                                # (B, 9), (B,) near a wall or a face
                rows = seen.nonzero()[:, 0]                                    # (R,) searched: those only
                dist = torch.cdist(key[rows], self.step_keys)                  # (R, N)
                hid = self.steps[:, 0].isinf()                                 # (N,) windows whose ball hid next
                # Where all of the nearest windows' balls hid in a wall the next frame, away from the paddles, the ball
                # hides too: Pong draws no ball there for a frame, by sub-pixel phase (next to a paddle the few such
                # windows had hidden balls Pong showed).
                dh, jh = dist.topk(STEP_NEIGHBOURS, 1, largest=False)
                xr = x0[rows, 0]
                hid_all = (dh[:, -1] <= STEP_NEAR) & hid[jh].all(1) & (xr > MIDFIELD[0] + 8) & (xr < MIDFIELD[1] - 6)
                hide = hide.index_put((rows,), hid_all.to(hide.dtype))
                # The step: the median of the nearest windows whose ball showed.
                dist, j = dist.masked_fill(hid, math.inf).topk(STEP_NEIGHBOURS, 1, largest=False)   # (R, k)
            rows, j = rows[dist[:, -1] <= STEP_NEAR], j[dist[:, -1] <= STEP_NEAR]   # a window like few seen: the rules
            ball = ball.index_put((rows,), x0[rows] + self.steps[j].median(1).values)
        # The paddles, (player, opponent) at once: centre plus residual, height 7 rows plus residual.
        edges = c[:, -1, PT:NC]                                                # (B, 4) PT, PB, OT, OB
        mid = (edges[:, 0::2] + edges[:, 1::2]) / 2 + self.SCALE * r[:, PT:NC:2]   # (B, 2)
        half = (7.0 + self.SCALE * r[:, PB:NC:2]) / 2
        paddles = torch.stack([mid - half, mid + half], -1).flatten(1)         # (B, 4) PT, PB, OT, OB
        # Pong's opponent is the game's own program: where it goes next is where it went from the most similar training
        # windows (opp_key: its last three steps, the ball's row from it and its vertical step, where it is and how much
        # of it shows), a table like the ball's, outside training only.
        if len(self.opp_steps) >= OPP_NEIGHBOURS and c.shape[1] >= 4 and not self.training:
            with torch.no_grad():
                ahead = torch.cat([ball, ((pres[:, -1] > 0.5) & (hide < 0.5)).to(ball.dtype)[:, None]], 1)   # (B, 3)
                key = opp_key(c[:, -4:], self.opp_weights, ahead if bool(self.opp_next) else None)           # (B, 8)
                opp = c[:, -1, OT:OB + 1] + table_step(key, self.opp_keys, self.opp_steps, self.opp_counts,
                                                       OPP_NEIGHBOURS)   # (B, 2)
            paddles = torch.cat([paddles[:, :2], opp], 1)
        # The player's paddle moves as the actions push it, with Pong's lag and momentum, and its steps alias on the
        # 84-row screen by where it is: it takes the step that followed the most similar training windows (play_key: its
        # last three steps, the last four actions' senses, where it is and how much of it shows), outside training only.
        if len(self.play_steps) >= PLAY_NEIGHBOURS and c.shape[1] >= 4 and self.action_conditioned and not self.training:
            with torch.no_grad():
                key = play_key(c[:, -4:], self.direction[actions[:, -4:].long() + 1], self.play_weights)   # (B, 9)
                play = c[:, -1, PT:PB + 1] + table_step(key, self.play_keys, self.play_steps, self.play_counts,
                                                        PLAY_NEIGHBOURS)   # (B, 2)
            paddles = torch.cat([play, paddles[:, 2:]], 1)
        nxt = torch.cat([ball, 10 * r[:, BP:BP + 1], paddles], 1)              # (B, 7)
        return nxt, g + r[:, NC:-1], torch.stack([turn, face.float(), hide], 1)


# What makes two windows' next ball steps alike (ball_key), each term's weight: the last step (x, y), the one
# before, the distance to the top and bottom walls (up to 8 px), to the opponent's and the player's face (-4..12
# px), and near a face (x < 22 or > 62) the ball's row from the centre of the paddle it flies to (+-12 rows).
STEP_KEY = (1.0, 1.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5)
STEP_NEIGHBOURS = 3                        # the step is the median of this many nearest training windows'
STEP_NEAR = 3.0                            # ... if all are this near (in the key's units: ~px)
LEVEL_PX = 0.8                             # Pong's vertical speeds are 0, 1.6, 3.2 px; the encoder's jitter ~0.4


def flying_out(x: torch.Tensor, vx: torch.Tensor) -> torch.Tensor:
    """A ball at x (...) moving vx (...) a step is past a paddle's face (2 px beyond it) and flying out of play."""
    return ((x > FACES[1] + 2) & (vx > 0)) | ((x < FACES[0] - 2) & (vx < 0))


def ball_key(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last three frames' coordinates (..., 3, 7), presence 0/1 -> the ball's key (..., 9), weighted by
    STEP_KEY, and whether the ball shows in all three (..., )."""
    x, y, pres = c[..., BX], c[..., BY], c[..., BP]
    v1x, v1y, v2x, v2y = x[..., 2] - x[..., 1], y[..., 2] - y[..., 1], x[..., 1] - x[..., 0], y[..., 1] - y[..., 0]
    xl, yl = x[..., 2], y[..., 2]
    (lo, hi), last = BALL_Y_RANGE, c[..., 2, :]
    pad = torch.where(v1x > 0, last[..., PT] + last[..., PB], last[..., OT] + last[..., OB]) / 2
    near = (xl < MIDFIELD[0] + 8) | (xl > MIDFIELD[1] - 6)
    key = torch.stack([v1x, v1y, v2x, v2y, (yl - lo).clamp(0, 8), (hi - yl).clamp(0, 8), (xl - FACES[0]).clamp(-4, 12),
                       (FACES[1] - xl).clamp(-4, 12), torch.where(near, (yl - pad).clamp(-12, 12), 0 * yl)], -1)
    # In open midfield the ball flies on at a snapped speed; past a paddle's face it flies on out (a table of steps
    # to frames that still show the ball has none that leave).
    past = flying_out(xl, v1x)
    # A level flight (both vertical steps under LEVEL_PX) meets no wall: near one it flies on by the rules, as in
    # midfield (the few recorded level windows near a wall had left it the neighbours' 1.6-px steps, off by 2 px).
    level = (v1y.abs() < LEVEL_PX) & (v2y.abs() < LEVEL_PX)
    local = (near | (((yl - lo < 8) | (hi - yl < 8)) & ~level)) & ~past
    return key * key.new_tensor(STEP_KEY), (pres > 0.5).all(-1) & local


def ball_steps(c: np.ndarray, episode: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The step table of a set's consecutive frames: coordinates c (N, 7), hard presence, episode ids (N,) ->
    ball_key (M, 9) of every window of three frames whose ball shows in them, and the next step in its episode
    (M, 2): inf where the next frame shows no ball though the ball is in play (hidden in a wall for a frame)."""
    t = np.arange(2, len(c) - 1)
    x = c[t, BX]
    in_play = (x > PADDLE_COLS["opponent"][0] - 1) & (x < PADDLE_COLS["player"][1] + 1)
    t = t[(episode[t - 2] == episode[t + 1]) & ((c[t + 1, BP] > 0.5) | in_play)]
    key, seen = ball_key(torch.from_numpy(c[t[:, None] + np.arange(-2, 1)]))
    t = t[seen.numpy()]
    return key[seen].numpy(), np.where(c[t + 1, BP:BP + 1] > 0.5, c[t + 1, :BP] - c[t, :BP], np.inf)


# What makes two windows' next opponent steps alike (opp_key), each term's weight: its centre's last three steps, the
# ball's presence, its row from the opponent's centre and its last vertical step, the opponent's centre and its rows.
# Pong's opponent chases the ball's row: that row and the ball's step weigh most (the weights before 2026-11-27 were
# OPP_KEY_V1, which checkpoints without Predictor.opp_weights were built with; measured in the README's 17th round).
OPP_KEY = (1.0, 1.0, 0.5, 10.0, 4.0, 2.0, 1.0, 1.0)
OPP_KEY_V1 = (1.0, 1.0, 1.0, 10.0, 0.5, 1.0, 0.2, 1.0)
OPP_NEIGHBOURS = 3
OPP_JUMP = 5.0                             # it moves <= 3 rows a step but where a serve puts it (any jump alike)


def opp_key(c: torch.Tensor, weights: torch.Tensor | None = None, nxt: torch.Tensor | None = None) -> torch.Tensor:
    """The last four frames' coordinates (..., 4, 7), presence 0/1 -> the opponent's key (..., 8), weighted by
    `weights` (8,) (default OPP_KEY). A hidden opponent (both edges at the top wall) has rows 0. With `nxt` (..., 3),
    the next frame's ball (x, y, presence 0/1): where the last frame and the next show it, the ball's row and vertical
    step are the next frame's — Pong's opponent moves toward the ball as it is in the frame it moves into (the sign of
    its step agrees with the ball's row from it in that frame on 75 % of recorded steps, in the frame before on 50 %)."""
    oc = (c[..., OT] + c[..., OB]) / 2                                         # (..., 4) its centres
    v = (oc[..., 1:] - oc[..., :-1]).clamp(-OPP_JUMP, OPP_JUMP)                # (..., 3) its steps; a jump: any
    last, prev = c[..., -1, :], c[..., -2, :]
    bp = last[..., BP]
    dy = torch.where(bp > 0.5, last[..., BY] - oc[..., -1], 0 * bp)
    vy = torch.where((bp > 0.5) & (prev[..., BP] > 0.5), last[..., BY] - prev[..., BY], 0 * bp)
    if nxt is not None:
        on = (bp > 0.5) & (nxt[..., 2] > 0.5)
        dy = torch.where(on, nxt[..., 1] - oc[..., -1], dy)
        vy = torch.where(on, nxt[..., 1] - last[..., BY], vy)
    key = torch.stack([v[..., 2], v[..., 1], v[..., 0], bp, dy, vy, oc[..., -1], last[..., OB] - last[..., OT]], -1)
    return key * (key.new_tensor(OPP_KEY) if weights is None else weights)


def table_step(key: torch.Tensor, keys: torch.Tensor, steps: torch.Tensor, counts: torch.Tensor, k: int) -> torch.Tensor:
    """The median step (B, 2) of the k training windows nearest each key (B, F) in a table of distinct rows keys (N, F),
    their steps (N, 2) and how many windows had each (N,) (random play repeats its points): the k nearest windows are the
    nearest rows, each as many times as it was seen."""
    j = torch.cat([torch.cdist(x, keys).topk(k, 1, largest=False)[1] for x in key.split(1024)])   # (B, k) in chunks
    n = counts[j] if len(counts) == len(steps) else torch.ones_like(j, dtype=key.dtype)
    at = torch.arange(k, device=key.device)
    j = j.gather(1, (n.cumsum(1)[:, None, :] <= at[None, :, None]).sum(-1))   # (B, k) with repeats
    return steps[j].median(1).values


def opp_steps(c: np.ndarray, episode: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The opponent's table of a set's consecutive frames: coordinates c (N, 7), hard presence, episode ids (N,) ->
    opp_key (M, 8) of every window of four frames with a next frame in its episode that is no serve (there the opponent
    jumps to where the serve puts it: WorldModel.dream_step), and the step of its top and bottom edges into it (M, 2)."""
    t = np.arange(3, len(c) - 1)
    t = t[(episode[t - 3] == episode[t + 1]) & ~((c[t, BP] < 0.5) & (c[t + 1, BP] > 0.5))]
    key = opp_key(torch.from_numpy(c[t[:, None] + np.arange(-3, 1)]), nxt=torch.from_numpy(c[t + 1, :BP + 1]))
    return key.numpy(), c[t + 1, OT:OB + 1] - c[t, OT:OB + 1]


# What makes two windows' next player steps alike (play_key), each term's weight: its centre's last three steps, the
# vertical sense of the actions at the last four frames (the last first: Pong's paddle answers with a lag and coasts),
# its centre (the 84-row screen aliases its steps by where it is; and the walls stop it) and its rows.
PLAY_KEY = (1.0, 1.0, 0.5, 10.0, 10.0, 3.0, 1.0, 4.0, 1.0)
PLAY_NEIGHBOURS = 3
PONG_DIRECTION = (0.0, 0.0, -1.0, 1.0, -1.0, 1.0)   # Pong's actions: NOOP, FIRE, RIGHT (up), LEFT (down), RIGHTFIRE, LEFTFIRE


def play_key(c: torch.Tensor, sense: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The last four frames' coordinates (..., 4, 7) and the vertical sense of the actions taken at them (..., 4)
    (-1 up, 1 down, 0 neither or unknown) -> the player's key (..., 9), weighted by `weights` (default PLAY_KEY)."""
    pc = (c[..., PT] + c[..., PB]) / 2                                         # (..., 4) its centres
    v = pc[..., 1:] - pc[..., :-1]
    key = torch.stack([v[..., 2], v[..., 1], v[..., 0], sense[..., 3], sense[..., 2], sense[..., 1], sense[..., 0],
                       pc[..., -1], c[..., -1, PB] - c[..., -1, PT]], -1)
    return key * (key.new_tensor(PLAY_KEY) if weights is None else weights)


def play_steps(c: np.ndarray, episode: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The player's table of a set's consecutive frames: coordinates c (N, 7), episode ids (N,), actions (N,) (Pong's) ->
    play_key (M, 9) of every window of four frames with a next frame in its episode, and the step of the player's top
    and bottom edges into it (M, 2)."""
    t = np.arange(3, len(c) - 1)
    t = t[episode[t - 3] == episode[t + 1]]
    sense = torch.tensor(PONG_DIRECTION)[torch.from_numpy(np.asarray(actions, np.int64)[t[:, None] + np.arange(-3, 1)])]
    return play_key(torch.from_numpy(c[t[:, None] + np.arange(-3, 1)]), sense).numpy(), c[t + 1, PT:PB + 1] - c[t, PT:PB + 1]


# Between points Pong's opponent climbs ~2.7 rows a frame until it hides above the top wall, and the serve comes 15-16
# frames after the ball left: where the opponent is in a window's K frames (gap_key) times the serve once the window no
# longer shows the ball leave. The wait is the median of this many training windows most alike (gap_waits).
GAP_NEIGHBOURS = 5


def gap_key(c: torch.Tensor) -> torch.Tensor:
    """A window's coordinates (..., K, 7) -> its key (..., 2K): the opponent's centre in each frame (0 while hidden
    above the top wall) and 20 where it shows."""
    shown = (c[..., OB] - c[..., OT]) > 1.0
    return torch.cat([torch.where(shown, (c[..., OT] + c[..., OB]) / 2, 0.0), 20.0 * shown.to(c.dtype)], -1)


def gap_waits(c: np.ndarray, episode: np.ndarray, u: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The wait table of a set's consecutive frames: coordinates c (N, 7), hard presence, episode ids (N,), their serve
    inputs u (N, 4) (serve_inputs: u[:, 3] is the frames until the ball next shows / 16) -> gap_key (M, 2K) of every
    window of K frames without a ball that a serve follows in its episode, the frames from the window's last frame
    to that serve (M,), and that serve: its first x, y and its first step (M, 4) (0 where the episode ends first)."""
    pres, wait = c[:, BP] > 0.5, u[:, 3] * 16                                # / 16 and * 16: exact
    t = np.arange(K - 1, len(c) - 1)
    if len(t) == 0:
        return np.zeros((0, 2 * K), np.float32), np.zeros(0, np.float32), np.zeros((0, 4), np.float32)
    ok = (episode[t - K + 1] == episode[t]) & (wait[t] > 0)
    ok &= ~np.stack([pres[t - k] for k in range(K)]).any(0)
    t = t[ok]
    at = t + wait[t].astype(np.int64)                                        # the serve's first frame
    nxt = np.minimum(at + 1, len(c) - 1)
    step = np.where(((episode[nxt] == episode[at]) & pres[nxt])[:, None], c[nxt, :BP] - c[at, :BP], 0.0)
    serve = np.concatenate([c[at, :BP], step], 1).astype(np.float32)
    return gap_key(torch.from_numpy(c[t[:, None] + np.arange(1 - K, 1)])).numpy(), wait[t], serve


def snap_speed(v: torch.Tensor, speeds: torch.Tensor, within: float = 0.4) -> torch.Tensor:
    """Velocities v (B,) moved to the nearest of `speeds` (S,) (>= 0, either sign) when within `within` px;
    or v (B, 2) to the nearest of each column's speeds (2, S) (inf-padded)."""
    dist, j = (v.abs()[..., None] - speeds).abs().min(-1)                   # (B,) or (B, 2)
    near = speeds[j] if speeds.dim() == 1 else speeds.gather(1, j.T).T
    return torch.where(dist < within, near * torch.sign(v), v)


def onto_field(c: torch.Tensor) -> torch.Tensor:
    """Dreams only: predicted coordinates (B, 7) moved onto what a real frame can show. Centres stay in
    the field; a paddle is 6-13 rows, or shorter where a wall cuts it, or hidden above the top wall
    (a short one away from the walls becomes 7 rows about its centre; within 3.5 rows of a wall it
    reaches the wall; one with no rows left hides above the top wall, or in the bottom half stays a
    2-row stub at the bottom wall; the player's keeps >= 2 rows at the top wall); the ball stays
    between the walls."""
    lo, hi = FIELD
    out = [c[:, BX].clamp(-2, 86), c[:, BY].clamp(lo, hi), c[:, BP]]
    for t, b in ((PT, PB), (OT, OB)):
        mid, h = ((c[:, t] + c[:, b]) / 2).clamp(lo, hi), (c[:, b] - c[:, t]).clamp(0, PADDLE_ROWS[1])
        top, bot = (mid - h / 2).clamp(lo, hi), (mid + h / 2).clamp(lo, hi)
        short = (bot - top < PADDLE_ROWS[0]) & (top > lo + 0.5) & (bot < hi - 0.5)
        near_top, near_bot = mid - 3.5 <= lo, mid + 3.5 >= hi
        top = torch.where(short & near_top, torch.full_like(top, lo),
                          torch.where(short & ~near_bot, (mid - 3.5).clamp(lo, hi), top))
        bot = torch.where(short & near_bot, torch.full_like(bot, hi),
                          torch.where(short & ~near_top, (mid + 3.5).clamp(lo, hi), bot))
        # No rows left: hidden above the top wall (as the opponent's paddle hides) in the top half, else a
        # 2-row stub at the bottom wall (a real paddle never hides there). The player's paddle never hides:
        # at the top wall it keeps >= 2 rows (as in every recorded frame; a dream fed only UP ends there).
        gone, up = bot - top < 0.5, mid < (lo + hi) / 2
        top = torch.where(gone, torch.where(up, torch.full_like(top, lo), torch.full_like(top, hi - 2)), top)
        bot = torch.where(gone, torch.where(up, torch.full_like(bot, lo), torch.full_like(bot, hi)), bot)
        if t == PT:
            bot = torch.where(top <= lo + 0.5, bot.clamp(min=lo + 2), bot)
        out += [top, bot]
    return torch.stack(out, 1)


def no_crawl(nxt: torch.Tensor, c: torch.Tensor, speeds: torch.Tensor) -> torch.Tensor:
    """Dreams only: in midfield Pong's ball never crawls, its horizontal step is one of its speeds
    (>= 1.5 px on 5,397 recorded steps). A ball that has flown for the last two frames of the window
    c (B, K, 7) moves on by the nearest of `speeds`, however far off the predicted step in nxt (B, 7)
    is (dreams had carried a slow serve on at ~1 px a step in up to 10 % of their frames)."""
    x1 = c[:, -1, BX]
    fly = (c[:, -1, BP] > 0.5) & (c[:, -2, BP] > 0.5) & (x1 > MIDFIELD[0]) & (x1 < MIDFIELD[1])
    x = torch.where(fly, x1 + snap_speed(nxt[:, BX] - x1, speeds, math.inf), nxt[:, BX])
    return torch.cat([x[:, None], nxt[:, BX + 1:]], 1)


def held(nxt: torch.Tensor, c: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Dreams only: after two UP actions in a row (the window's last two, actions (B, K)) neither edge of
    the player's paddle moves down, after two DOWN neither moves up, as in every recorded step
    (UP_ACTIONS, data/probe.py). Fed only UP, dreams of one training seed in three had let the paddle
    creep down off the top wall, a little every step, while the ball was out."""
    up, down = (torch.isin(actions[:, -2:], torch.tensor(s, device=actions.device)).all(1, keepdim=True)
                for s in (UP_ACTIONS, DOWN_ACTIONS))
    old, new = c[:, -1, PT:PB + 1], nxt[:, PT:PB + 1]                       # (B, 2) top and bottom edges
    new = torch.where(up, torch.minimum(new, old), torch.where(down, torch.maximum(new, old), new))
    return torch.cat([nxt[:, :PT], new, nxt[:, PB + 1:]], 1)


def pong_step(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Ball positions a, b (..., 2) in consecutive frames -> (...) bool: b is within one of Pong's steps of a (<= 4.2
    px across, 3.2 down, + 1): the same ball flying, not an encoder's error."""
    st = (b - a).abs()
    return (st[..., 0] <= max(BALL_SPEEDS[0]) + 1.0) & (st[..., 1] <= max(BALL_SPEEDS[1]) + 1.0)


def still_in_play(c: torch.Tensor) -> torch.Tensor:
    """A window's coordinates (B, K, 7), hard presence -> the same with a ball the encoder lost put back where it
    says, where that is one of Pong's steps (<= 4.2 px across, 3.2 down, + 1) from the frame before: Pong's ball
    leaves the screen only past a paddle (BALL_X_RANGE), so a ball seen the frame before with room for such a step
    is still there. The encoder loses a dim ball (half behind a wall or beside a paddle) where its coordinates still
    find it; a window whose last frame lost it had the dream serve anew. (A ball wholly behind the top wall: the
    coordinates find nothing there, it stays lost, and the predictor brings it back.)"""
    c = c.clone()
    lo, hi = BALL_X_RANGE[0] + max(BALL_SPEEDS[0]), BALL_X_RANGE[1] - max(BALL_SPEEDS[0])
    for k in range(1, c.shape[1]):
        x, near = c[:, k - 1, BX], pong_step(c[:, k - 1, :BP], c[:, k, :BP])
        back = (c[:, k - 1, BP] > 0.5) & (c[:, k, BP] < 0.5) & (x > lo) & (x < hi) & near
        c[:, k, BP] = torch.where(back, 1.0, c[:, k, BP])
    return c


def just_served(pres: torch.Tensor) -> torch.Tensor:
    """Ball presence (B, K) 0/1 of a window -> (B,) bool: the ball appeared in its last frame (served one frame
    ago). A dream's start matches such a ball's serve, and its steps then tell the predictor that serve."""
    return (pres[:, -1] > 0.5) & (pres[:, -2] < 0.5)


def serve_origin(serves: torch.Tensor) -> torch.Tensor:
    """Where each serve first showed, in pixels: serves (..., >= 5) SERVE_COLS -> (..., 2) x, y."""
    return torch.stack([serves[..., 4], serves[..., 0] * Predictor.SCALE + CENTRE[1]], -1)


def on_serve_line(c: torch.Tensor, serves: torch.Tensor, px: float = 1.2) -> tuple[torch.Tensor, ...]:
    """Is a window's ball on each serve's straight path? c (B, L >= 2, 7) coordinates with presence 0/1, serves (S, >= 5)
    SERVE_COLS, or one per window (B, 1, >= 5) -> (B, S) bool (or (B, 1)), and the ball's row from the line (B, S) and
    its last step's from the serve's (B, S, 2): the ball in its last two frames, its step the serve's (within 0.5 px in
    x and y) and its row the line's where its x is (within px). At a wall the line runs on past it but the ball stops
    there for a frame, its last step short; past BALL_LAST_X the screen's edge cuts the ball and its centre lags: there
    the frame before is read."""
    o, v = serve_origin(serves), 2 * serves[..., 1:3]                          # (S, 2) each, or (B, 1, 2)
    if c.shape[1] > 2:
        edge = (c[:, -1, BX] <= BALL_LAST_X[0]) | (c[:, -1, BX] >= BALL_LAST_X[1])
        c = torch.where(edge[:, None, None], c[:, :-1], c[:, 1:])
    xy, step = c[:, -1, :BP], c[:, -1, :BP] - c[:, -2, :BP]                    # (B, 2) each
    k = (xy[:, :1] - o[..., 0]) / v[..., 0]                                    # (B, S) frames since that serve
    line = o[..., 1] + v[..., 1] * k                                           # (B, S) its row there
    lo, hi = BALL_Y_RANGE
    dy = torch.minimum((xy[:, 1:] - line).abs(), (xy[:, 1:] - line.clamp(lo, hi)).abs())
    dv = (step[:, None] - v).abs()                                             # (B, S, 2)
    at_wall = ((xy[:, 1] <= lo + 0.5) | (xy[:, 1] >= hi - 0.5))[:, None]       # (B, 1)
    ok = (k > 0) & (dy < px) & (dv[..., 0] < 0.5) & ((dv[..., 1] < 0.5) | at_wall) & (c[:, -2:, BP] > 0.5).all(1, keepdim=True)
    return ok, dy, dv


def serve_of(c: torch.Tensor, serves: torch.Tensor, px: float = 1.2, frames: int = PHASE_FRAMES
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The serve whose straight path from the centre a window's ball is on. c (B, L, 7) coordinates with
    presence 0/1, serves (S, >= 5) SERVE_COLS -> index (B,) into serves and whether one matched (B,). A
    ball matches a serve where on_serve_line says so: a serve's ball flies straight until a paddle or a wall
    turns it (Pong serves from x ~ 42 and goes out past a paddle after ~19 frames). Of those that match, the
    one whose frame phase fits: the ball flies a whole number of x-steps from where its serve showed, and Pong
    shows each kind of serve at up to three places ~0.5 px apart along its line, which the line cannot tell
    apart (the next point's serve repeats the rally's, and a serve shown 0.6 px off puts the dream a frame
    early). The phase is read from up to `frames` frames of the ball flying that way in x, up to the last (0:
    the line alone)."""
    o, v = serve_origin(serves), 2 * serves[:, 1:3]                            # (S, 2) each
    ok, dy, dv = on_serve_line(c, serves, px)
    step = c[:, -1, :BP] - c[:, -2, :BP]                                       # (B, 2)
    w = c[:, -max(frames, 1):]                                                 # (B, m, 7)
    shown = w[:, :, BP] > 0.5
    way = shown[:, 1:] & shown[:, :-1] & ((w[:, 1:, BX] - w[:, :-1, BX]) * step[:, :1] > 0)   # (B, m - 1)
    run = torch.cumprod(way.flip(1).long(), 1).flip(1)                         # 1: flying that way up to the last
    use = torch.cat([run, run.new_ones(len(c), 1)], 1).to(c.dtype)             # (B, m) the last frame, and those
    kk = (w[:, :, BX, None] - o[:, 0]) / v[:, 0]                               # (B, m, S) frames since each serve
    phase = ((kk - kk.round()).abs() * use[..., None]).sum(1) / use.sum(1, keepdim=True) * v[:, 0].abs()   # (B, S) px
    phase = phase if frames > 0 else torch.zeros_like(phase)
    j = torch.where(ok, phase + 0.01 * (dy + dv.sum(-1)), torch.full_like(dy, math.inf)).argmin(1)
    return j, ok.any(1)


@dataclass
class Dream:
    """What a dream carries from step to step: the window of K latents as the predictor reads them,
    the rally's serve or the coming one (from those seen in training) and the frames left until it."""
    c: torch.Tensor        # (B, K, 7) coordinates, ball presence 0/1
    g: torch.Tensor        # (B, G) normalised global code of the last frame
    serve: torch.Tensor    # (B, 7) SERVE_COLS (older checkpoints: fewer)
    wait: torch.Tensor     # (B,) frames until that serve while the ball is out
    gen: torch.Generator   # draws the serves: a dream is reproducible from its seed
    timed: torch.Tensor    # (B,) bool: the wait is known (the dream saw the ball leave), not drawn


def _check_frames(x, name: str, n: int | None = None) -> torch.Tensor:
    """uint8 (N, 84, 84) numpy or tensor -> tensor; anything else is a UsageError."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 3 or tuple(x.shape[1:]) != (84, 84):
        got = f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}"
        raise UsageError(f"{name} must be uint8 of shape (N, 84, 84), got {got}")
    if n is not None and len(x) != n:
        raise UsageError(f"{name} must hold exactly {n} frames (the model's context), got {len(x)}")
    return x


def squared_error(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> float:
    """Summed squared difference of two uint8 frame stacks (0..255 scale), in chunks (float copies of a
    30,000-frame held-out split would take 850 MB each)."""
    return sum(float(((a[i:i + chunk].astype(np.float32) - b[i:i + chunk]) ** 2).sum()) for i in range(0, len(a), chunk))


def pixel_mse(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> float:
    """Mean squared error of two uint8 frame stacks on the 0..1 scale."""
    return squared_error(a, b, chunk) / max(a.size, 1) / 255 ** 2


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


class WorldModel(nn.Module):
    """Autoencoder + predictor + the config that built them; the object users load and roll out."""

    def __init__(self, cfg: Config, num_actions: int, game: str = "Pong"):
        super().__init__()
        self.cfg, self.num_actions, self.game = cfg, num_actions, game
        m = cfg.model
        self.objects = game == "Pong"     # the latent's coordinates are Pong's objects (data/probe.py); other games: pixels only
        self.ae = Autoencoder(m.latent_dim, m.width, m.global_width, m.gain, self.objects)
        self.predictor = Predictor(m.latent_dim, m.context, num_actions, m.hidden, m.action_conditioned, m.global_proj)

    @property
    def context(self) -> int:
        return self.cfg.model.context

    @property
    def device(self) -> torch.device:
        return self.ae.background.device

    @torch.no_grad()
    def reconstruct(self, frames, batch_size: int = 256) -> np.ndarray:
        """uint8 (N, 84, 84) -> uint8 (N, 84, 84)."""
        x = _check_frames(frames, "frames")
        self.eval()
        out = np.empty((len(x), 84, 84), np.uint8)  # filled in place: no float copy of the whole set
        for i in range(0, len(x), batch_size):
            out[i:i + batch_size] = to_uint8(self.ae(x[i:i + batch_size].to(self.device))[0])
        return out

    def _check_actions(self, actions, name: str, n: int | None = None) -> torch.Tensor:
        """A 1-D sequence of ints (list, numpy, tensor; [] is zero actions) -> long tensor; else UsageError."""
        a = None if actions is None or isinstance(actions, (str, bytes)) else np.asarray(
            actions.cpu() if isinstance(actions, torch.Tensor) else actions)
        if a is not None and a.size == 0 and a.dtype.kind in "fO":
            a = a.astype(np.int64)                                          # [] is zero actions, not float64
        if a is None or a.ndim != 1 or a.dtype.kind not in "iu":
            got = type(actions).__name__ if a is None else f"{a.dtype} {tuple(a.shape)}"
            raise UsageError(f"{name} must be a 1-D sequence of integer actions, got {got}")
        if n is not None and len(a) != n:
            raise UsageError(f"{name} must hold {n} actions (those taken at context[:-1]), got {len(a)}")
        if len(a) and (a.min() < 0 or a.max() >= self.num_actions):
            raise UsageError(f"{name} must lie in [0, {self.num_actions}) for {self.game}, got [{a.min()}, {a.max()}]")
        return torch.from_numpy(a.astype(np.int64))

    @torch.no_grad()
    def rollout(self, context, actions, context_actions=None) -> np.ndarray:
        """Open-loop dream: context uint8 (K, 84, 84), actions int (H,) -> uint8 (H, 84, 84).

        actions[0] is taken at context[-1] and yields output frame 0; actions[i] is taken at
        output frame i - 1 and yields frame i. Predictions are fed back, never real frames.
        context_actions (K - 1,), optional: the actions taken at context[:-1], if known.
        """
        ctx = _check_frames(context, "context", self.context)
        a = self._check_actions(actions, "actions")
        past = None if context_actions is None else self._check_actions(context_actions, "context_actions", self.context - 1)[None]
        return to_uint8(self.rollout_batch(ctx[None], a[None], past)[0])

    @torch.no_grad()
    def rollout_batch(self, context: torch.Tensor, actions: torch.Tensor, context_actions: torch.Tensor | None = None,
                      seed: int = 0, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Many dreams: uint8 (B, L, 84, 84), int (B, H), optional int (B, K - 1) -> float (B, H, 84, 84) in 0..1.
        The last K frames are the context; any before them are its memory (start: where the ball went out), `valid`
        (B,) how many of the L are real. `seed` draws the serves (the only randomness of a dream)."""
        self.eval()
        B, K = len(context), self.context
        if context_actions is None:
            context_actions = torch.full((B, K - 1), -1, dtype=torch.long)    # unknown
        history = torch.cat([context_actions.long(), actions.long()], 1).to(self.device)  # (B, K - 1 + H)
        d = self.encode_context(context, seed, valid)
        out = []
        for i in range(actions.shape[1]):
            d, frame = self.dream_step(d, history[:, i:i + K])
            out.append(frame)                                                  # (B, 84, 84)
        return torch.stack(out, 1) if out else torch.zeros(B, 0, 84, 84)

    def encode_context(self, context: torch.Tensor, seed: int = 0, valid: torch.Tensor | None = None) -> Dream:
        """uint8 (B, L, 84, 84), L >= K (the frames before the last K: memory) -> a dream starting from these frames."""
        B, L = context.shape[:2]
        return self.start(self.ae.encode(context.flatten(0, 1).to(self.device)).view(B, L, -1), seed, valid)

    def start(self, z: torch.Tensor, seed: int = 0, valid: torch.Tensor | None = None) -> Dream:
        """Latent windows (B, L, D), L >= K -> a dream from their last K frames: hard ball presence, the serve of the
        rally the window shows (the one whose straight path from the centre its ball is on, else one drawn) and, if the
        ball is out, the frames until the next. The L - K frames before the window are a memory of the point: where
        they show the ball go out, the wait is known (next_serve: from where it was last seen) and the serve is the
        rally's, if the ball was still on its path, else the one most alike training windows saw (gap_waits). A window
        whose frames show no ball at all waits as those most alike training windows did (where all agree, exactly; else
        the predictor serves when it sees fit) and serves as most of them did. A ball served in the window's last
        frame keeps the serve seen in training nearest where it appeared (within SERVE_MATCH_PX): where Pong's serve
        first shows tells where it flies (x < 41.5: to the left, y < 46: up; every one of ~600 recorded serves).
        `valid` (B,): how many of the L frames, counted from the last, are real (the rest are padding before an
        episode's first frame, read as frames without a ball); None: all."""
        B, L = z.shape[:2]
        K = self.context
        ca = still_in_play(latent_table(self, z)[0])                           # (B, L, 7)
        if valid is not None:                                                  # padding: no ball
            pad = torch.arange(L, device=ca.device) < (L - valid.to(ca.device))[:, None]
            ca[:, :, BP] = torch.where(pad, 0.0, ca[:, :, BP])
        c, g = ca[:, -K:], latent_table(self, z[:, -1])[1]                     # (B, K, 7), (B, G)
        gen = torch.Generator().manual_seed(seed)
        serve = self._serves(B, gen)
        r = torch.rand(B, generator=gen)                                       # where in an unseen gap the window is
        s = self.predictor.serves.cpu()
        cc, cca = c.cpu(), ca.cpu()
        if s.shape[1] > 4:                                                     # older checkpoints: no x0, drawn
            dist, j = torch.cdist(cc[:, -1, :BP], serve_origin(s)).min(1)     # (B,) the serve that showed nearest
            just = just_served(cc[:, :, BP]) & (dist < SERVE_MATCH_PX)
            j2, on_path = serve_of(cca, s)
            serve = torch.where(just[:, None], s[j], torch.where(on_path[:, None], s[j2], serve))
        pres = cca[:, :, BP] > 0.5                                             # (B, L)
        out = torch.cumprod((~pres).flip(1).long(), 1).sum(1).float()         # (B,) trailing frames without ball
        seen = pres[:, :-1] & (out < L)[:, None]                               # a ball before the window's end
        rally = torch.zeros(B, dtype=torch.bool)
        if seen.any():                                                         # it went out: toward whom is the next?
            last = (seen * torch.arange(1, L)).argmax(1)                       # (B,) the last frame with a ball
            went = seen.any(1) & (out > 0)
            if s.shape[1] > 4:                                                 # the rally's serve, if still on its path
                path = cca[torch.arange(B)[:, None], (last[:, None] + torch.arange(1 - PHASE_FRAMES, 1)).clamp(min=0)]
                j3, rally = serve_of(path, s)                                  # (B, PHASE_FRAMES, 7) up to the last ball
                rally &= went
                serve = torch.where(rally[:, None], s[j3], serve)
            serve[went] = self.next_serve(serve[went], cca[torch.arange(B), last, BX][went], gen, rally[went])
        unknown = (r * (serve[:, 3] - K).clamp(min=1)).floor() + 1
        timed = out < L
        gk, gw = self.predictor.gap_keys.cpu(), self.predictor.gap_waits.cpu()
        if len(gw) >= GAP_NEIGHBOURS and gk.shape[1] == 2 * K:                 # (older checkpoints: no table, drawn)
            # A window without a ball waits as long as the training windows whose opponent climbed most alike did (their
            # median); where all of them agree, the serve comes then, else the predictor serves when it sees fit. Those
            # as near as the 5th nearest count too (an opponent hidden in every frame: all such windows, not 5 of them).
            dist = torch.cdist(gap_key(cc), gk)                                # (B, M)
            near = dist <= dist.topk(GAP_NEIGHBOURS, 1, largest=False)[0][:, -1:] + 1e-3
            w = torch.where(near, gw, math.nan)                                # (B, M) their waits, NaN for the rest
            unknown = w.nanmedian(1).values
            gs = self.predictor.gap_serves.cpu()
            if len(gs) == len(gw) and s.shape[1] > 4:                          # (older checkpoints: the serve drawn)
                # ... and serves as most of them did: Pong serves again as it did in the last rally when the same side
                # loses it, and where the opponent climbs from shows where that rally ended. (A memory that saw the ball
                # go out keeps the wait it tells.)
                row = torch.cdist(gs, torch.cat([serve_origin(s), 2 * s[:, 1:3]], 1)).argmin(1)   # (M,) its serve's row
                votes = near.float() @ F.one_hot(row, len(s)).float()          # (B, S)
                voted = s[votes.argmax(1)]                                     # (B, 7), with the wait the memory told
                voted[:, 3] = serve[:, 3]
                serve = torch.where(((out >= K) & ~rally)[:, None], voted, serve)
            timed = timed | (torch.where(near, gw, math.inf).amin(1) == torch.where(near, gw, -math.inf).amax(1))
        wait = torch.where(out >= L, unknown, (serve[:, 3] - out + 1).clamp(min=1))
        return Dream(c, g, serve.to(z.device), wait.to(z.device), gen, timed.to(z.device))

    def _serves(self, n: int, gen: torch.Generator) -> torch.Tensor:
        s = self.predictor.serves
        return s.cpu()[torch.randint(len(s), (n,), generator=gen)]                        # (n, 7)

    def next_serve(self, serve: torch.Tensor, last_x: torch.Tensor, gen: torch.Generator,
                   straight: torch.Tensor | None = None) -> torch.Tensor:
        """The serve after a point whose ball was last seen at x = last_x (B,), toward the side that lost it:
        Pong repeats the rally's serve (serve (B, 7), CPU) when the same side loses again (113 of 121 such
        points on recorded random play, 25 of 35 on tracker play), else one drawn from the training serves
        toward it. It comes after as many frames as it did after the 5 training points whose ball was last
        seen nearest last_x on that side (their median): where the ball last shows tells the frame phase of
        its exit (recorded play's probe: 15 frames after a last x of 81.6-82.5 or 1.1-2.1, 16 after 79.6-81.2
        or 3.2, on 300 of 300 points). Where `straight` (B,) (the ball flew the rally's serve's straight path to
        the exit), the serve repeated shows at the frame phase the exit tells (serve_phase)."""
        s = self.predictor.serves.cpu()
        side = torch.sign(last_x - CENTRE[0])
        keep = torch.sign(serve[:, 1]) == side
        if s.shape[1] > 5 and straight is not None:
            serve = self.serve_phase(serve, last_x, keep & straight, s)
        drawn = serve.clone()
        for sgn in (-1.0, 1.0):
            rows = torch.nonzero(torch.sign(s[:, 1]) == sgn)[:, 0]
            pick = ~keep & (side == sgn)
            if len(rows) and pick.any():
                drawn[pick] = s[rows[torch.randint(len(rows), (int(pick.sum()),), generator=gen)]]
        nxt = torch.where(keep[:, None], serve, drawn)
        if s.shape[1] > 5:                                                     # older checkpoints: the serve's own gap
            far = (last_x[:, None] - s[:, 5]).abs() + torch.where(torch.sign(s[:, 5] - CENTRE[0]) == side[:, None], 0, math.inf)
            dist, j = far.topk(min(5, len(s)), 1, largest=False)               # the 5 nearest: the encoder's x is ~0.3 px off
            gap = torch.where(dist.isfinite(), s[j, 3], math.nan).nanmedian(1).values
            nxt[:, 3] = torch.where(gap.isfinite(), gap, nxt[:, 3])
        return nxt

    @staticmethod
    def serve_phase(serve: torch.Tensor, last_x: torch.Tensor, which: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The rally's serve (B, 7), CPU, repeated after a ball last seen at x = last_x (B,), at the frame phase that exit
        tells, where `which` (B,), from the training serves s (S, 7), CPU (next_serve's): Pong shows a kind of serve at up to three places ~0.5 px apart along one line, and a
        repeated point keeps its phase, so the exit does too (a default run's training serves to the right: those at x
        43.4 followed balls last seen at 80.9-81.2, those at 42.3 and 42.8 balls last seen at 81.9-83.0). A serve whose
        training points never followed an exit there becomes the one of its line, among those that did (their last x
        within 0.25 px of the nearest), that showed nearest it: a serve read off a rally's path near its exit is often a
        phase off (the ball's steps there differ from its serve's first by up to 0.05 px, ~0.5 px over a path)."""
        line = (torch.sign(s[None, :, 1]) == torch.sign(serve[:, None, 1])) & ((s[None, :, 2] - serve[:, None, 2]).abs() < 0.05)
        off = torch.where(line, (s[None, :, 5] - last_x[:, None]).abs(), math.inf)   # (B, S) how far their exits were
        fits = line & (off <= off.amin(1, keepdim=True) + 0.25) & (off < 0.5)
        dist, j = (torch.cdist(serve_origin(serve), serve_origin(s)) + torch.where(fits, 0.0, math.inf)).min(1)
        return torch.where((which & dist.isfinite() & (dist > 0.1))[:, None], s[j], serve)

    def dream_step(self, d: Dream, actions: torch.Tensor) -> tuple[Dream, torch.Tensor]:
        """One open-loop step: a dream and the actions at its window's K frames (B, K) -> the dream one
        frame on, and that frame, float (B, 84, 84) in 0..1 (unclamped). While the ball is out, the
        predictor is told where and when the serve comes; when it goes out, the next is next_serve's."""
        p = self.predictor
        pres = d.c[:, :, BP]
        out = pres[:, -1] < 0.5
        just = just_served(pres)
        zero = torch.zeros_like(d.wait)
        u = torch.stack([torch.where(out, d.serve[:, 0], zero), torch.where(just, d.serve[:, 1], zero),
                         torch.where(just, d.serve[:, 2], zero), torch.where(out, d.wait / 16, zero)], 1)
        nxt, g, info = p(d.c, d.g, actions, u)
        # The presence of a ball seen in the last frame is Pong's, not the logit's. Past a paddle's face it goes out:
        # seen beyond BALL_LAST_X it shows no more the next frame, within them once more (the logit had it gone a
        # frame early or late). Between the faces a ball flying at Pong's steps shows (Pong's ball leaves only past a
        # paddle), unless the step table says it hides in a wall; one that jumped (the encoder's error) is the logit's.
        x0 = d.c[:, -1, BX]
        past = (pres[:, -1] > 0.5) & ((x0 < FACES[0]) | (x0 > FACES[1]))
        within = (x0 > BALL_LAST_X[0]) & (x0 < BALL_LAST_X[1])
        flying = (pres[:, -1] > 0.5) & (pres[:, -2] > 0.5) & pong_step(d.c[:, -2, :BP], d.c[:, -1, :BP])
        shown = torch.where(past, torch.where(within, 10.0, -10.0), torch.where(flying, 10.0, nxt[:, BP]))
        edge = torch.where(past & within, nxt[:, BX].clamp(*BALL_X_RANGE), nxt[:, BX])   # shown at the screen's edge
        nxt = torch.cat([edge[:, None], nxt[:, BY:BP], torch.where(info[:, 2] > 0.5, -10.0, shown)[:, None], nxt[:, BP + 1:]], 1)
        if d.serve.shape[1] > 6:
            # A serve comes when its frame comes, never before (the predictor had served a ball out past a rarely
            # seen side a frame after it left; a ball the encoder lost in midfield is the predictor's to bring back;
            # a window that never showed the ball leave has a drawn wait: there the predictor serves when it sees
            # fit, as it did before this rule), shows where it showed in training with the opponent mid-field (as on
            # every recorded serve: without it the opponent stayed hidden above the wall), and flies its first step.
            appear = out & torch.where(d.timed, d.wait <= 1, nxt[:, BP] > 0)   # a drawn wait: the predictor's call
            xy0 = serve_origin(d.serve)                                        # (B, 2)
            first = just & ((d.c[:, -1, :BP] - xy0).norm(dim=1) < SERVE_MATCH_PX)   # a ball back after the encoder lost it is no serve
            ball = torch.where(appear[:, None], xy0, torch.where(first[:, None], d.c[:, -1, :BP] + 2 * d.serve[:, 1:3], nxt[:, :BP]))
            x1 = d.c[:, -2, BX]                                                # a ball last seen beyond a paddle's face left
            left = out & ((pres[:, -2] < 0.5) | (x1 <= MIDFIELD[0]) | (x1 >= MIDFIELD[1]))   # (else the encoder lost it)
            shown = torch.where(appear | first, 10.0, torch.where(left, -10.0, nxt[:, BP]))
            opp = torch.stack([d.serve[:, 6] - 3.5, d.serve[:, 6] + 3.5], 1)
            nxt = torch.cat([ball, shown[:, None], nxt[:, PT:OT], torch.where(appear[:, None], opp, nxt[:, OT:])], 1)
        nxt = no_crawl(onto_field(nxt), d.c, p.speeds[0])                     # x's speeds (an inf pad is never nearest)
        if p.action_conditioned:                                                # a model blind to actions stays so
            nxt = held(nxt, d.c, actions)
        on = (nxt[:, BP] > 0) & (nxt[:, BX] >= BALL_X_RANGE[0]) & (nxt[:, BX] <= BALL_X_RANGE[1])   # past: out of play
        # Pong's ball leaves only past a paddle: one flying between the faces that the next frame does not show is
        # hidden in a wall (Pong draws none there for a frame): the dream keeps it, its frame does not show it.
        hidden = ~on & ~out & flying & (x0 > FACES[0]) & (x0 < FACES[1])
        gone = (~on & ~out & ~hidden).cpu()
        serve = d.serve.clone()
        if gone.any():
            g_ = gone.to(serve.device)
            straight = on_serve_line(d.c[g_], serve[g_][:, None])[0][:, 0].cpu()   # flown its serve's path to the exit
            serve[g_] = self.next_serve(serve[g_].cpu(), x0.cpu()[gone], d.gen, straight).to(serve.device)
        wait = torch.where(gone.to(d.wait.device), serve[:, 3], torch.where(out & ~on, (d.wait - 1).clamp(min=1), d.wait))
        nxt = torch.cat([nxt[:, :BP], (on | hidden)[:, None].float(), nxt[:, BP + 1:]], 1)
        drawn = p.codes[torch.cdist(g, p.codes).argmin(1)] if self.objects else g   # a score band seen in training
        frame = self.ae.decode(torch.cat([nxt[:, :BP], (16 * on[:, None].float() - 8), nxt[:, BP + 1:],
                                          drawn * p.gstd + p.gmean], 1))
        timed = gone.to(out.device) | (out & ~on & d.timed)
        return Dream(torch.cat([d.c[:, 1:], nxt[:, None]], 1), g, serve, wait, d.gen, timed), frame

    def save(self, path: str | Path, **extra) -> None:
        """Self-describing checkpoint, written to a temporary file and renamed (never half-written)."""
        write_checkpoint(dict(config=asdict(self.cfg), num_actions=self.num_actions, game=self.game,
                              model=self.state_dict(), versions=dict(torch=str(torch.__version__),
                              numpy=str(np.__version__), python=platform.python_version()), **extra), path)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, where: str = "checkpoint") -> "WorldModel":
        wm = cls(checkpoint_config(ckpt), ckpt["num_actions"], ckpt["game"])
        try:
            wm.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])[:300]
            raise UsageError(f"{where} does not match the model its config builds: {detail}") from None
        return wm

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "WorldModel":
        """Rebuild a model from a checkpoint alone (CPU unless told otherwise)."""
        return cls.from_checkpoint(read_checkpoint(path), f"checkpoint {path}").to(pick_device(device)).eval()


# ------------------------------------------------------------------------------------ batching


def step_rng(cfg: Config, phase: str, step: int) -> np.random.Generator:
    """The random stream of one training step: drawn from (seed, phase, step) alone, so a resumed
    run (or a DataLoader worker) draws exactly the batch an uninterrupted run would have drawn."""
    return np.random.default_rng([cfg.train.seed, PHASES.index(phase), step])


class FrameBatches(torch.utils.data.Dataset):
    """Autoencoder batches by step number: item t is step t's uint8 (B, 84, 84) frames and their
    object_labels (B, 7), found by the probe once for the whole training set.

    Frames stay uint8 (and on disk, for recorded datasets) until the model's first line;
    sorted indices make a gather from disk read the files in order. Frames whose ball moves toward
    the opponent (a returned ball: rare in random play) can be drawn 1 + ae.returned_ball_weight
    times as often as the rest.
    """

    def __init__(self, cfg: Config, data: FrameData, probed: dict[str, np.ndarray] | None = None):
        self.cfg, self.data = cfg, data
        self.part = rank_world()                        # here: DataLoader workers have no process group
        self.labels = self.p = None                    # (N, 7) labels up front only when given or sampling needs them
        if cfg.ae.returned_ball_weight > 0 or probed is not None:
            probed = probe(data.frames) if probed is None else probed
            self.labels = torch.from_numpy(object_labels(probed))
        if cfg.ae.returned_ball_weight > 0:
            w = 1 + cfg.ae.returned_ball_weight * returned_ball(probed, data.episode)
            self.p = w / w.sum()

    def __len__(self) -> int:
        return self.cfg.ae.steps + 1

    def indices(self, step: int) -> np.ndarray:
        """The sorted frame indices of step `step`'s batch."""
        rng, n, b = step_rng(self.cfg, "ae", step), len(self.data), self.cfg.ae.batch_size
        return np.sort(rng.integers(n, size=b) if self.p is None else rng.choice(n, size=b, p=self.p))

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = my_part(self.indices(step), self.part)                           # this rank's share (all: one process)
        x = np.ascontiguousarray(self.data.frames[idx])                        # (B, 84, 84)
        # The probe is per frame: labels found now equal those found up front (memory stays flat).
        labels = self.labels[idx] if self.labels is not None else torch.from_numpy(object_labels(probe(x)))
        return torch.from_numpy(x), labels                                     # (B, 84, 84), (B, 7)


def frame_loader(cfg: Config, data: FrameData, first_step: int, probed: dict | None = None) -> torch.utils.data.DataLoader:
    d = cfg.data
    extra = dict(prefetch_factor=d.prefetch_factor, persistent_workers=d.persistent_workers) if d.num_workers else {}
    return torch.utils.data.DataLoader(FrameBatches(cfg, data, probed), batch_size=None, sampler=range(first_step, cfg.ae.steps + 1),
                                       num_workers=d.num_workers, pin_memory=d.pin_memory, **extra)


def predictor_batch(cfg: Config, starts: np.ndarray, actions: torch.Tensor, step: int, phase: str = "pred"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The predictor's batch of step `step`: frame indices (B, K + U) of windows inside one episode, the
    actions at them (B, K + U), in which, as at the start of a dream, a share pred.unknown_past_prob
    of the windows do not know the actions before their last context frame (-1), and the step's
    standard-normal context noise (B, K * 6 + G): the context's positions, then its global code."""
    rng, K = step_rng(cfg, phase, step), cfg.model.context
    w = torch.from_numpy(window_batch(starts, K + cfg.pred.unroll, cfg.pred.batch_size, rng))   # (B, K + U)
    a = actions[w]
    unknown = torch.from_numpy(rng.random((len(a), 1)) < cfg.pred.unknown_past_prob).to(a.device)
    a[:, :K - 1] = torch.where(unknown, -1, a[:, :K - 1])
    gen, B = torch.Generator().manual_seed(int(rng.integers(2 ** 62))), len(w)
    noise = torch.cat([torch.randn(B, K * 6, generator=gen), torch.randn(B, cfg.model.latent_dim - NC, generator=gen)], 1)
    return w, a, noise.to(actions.device)


def serve_inputs(c: np.ndarray, episode: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The predictor's serve input u (N, 4) for predicting frame t + 1 from the frames up to t, from
    coordinates c (N, 7) (hard presence) of consecutive frames; and the serves seen (S, 7).

    Ball out at t: u = (y of its next appearance in this episode, normalised; 0; 0; frames until
    it / 16). Ball served at t (none at t - 1, one at t + 1): u = (0; vx / 2; vy / 2; 0) of its first
    step. serves: SERVE_COLS of each appearance after at
    least 8 frames without one (a serve: a 1-frame probe miss is not).
    """
    n, pres = len(c), c[:, BP] > 0.5
    u = np.zeros((n, 4), np.float32)
    same = np.r_[episode[1:] == episode[:-1], False]                          # frame t + 1 is in t's episode
    nxt_y, nxt_t = 0.0, -1
    for t in range(n - 2, -1, -1):
        if not same[t]:
            nxt_t = -1
            continue
        if pres[t + 1] and not pres[t]:
            nxt_y, nxt_t = (c[t + 1, BY] - CENTRE[1]) / Predictor.SCALE, t + 1
        if not pres[t] and nxt_t > t:
            u[t, 0], u[t, 3] = nxt_y, (nxt_t - t) / 16
        if pres[t] and t > 0 and not pres[t - 1] and same[t - 1] and pres[t + 1]:
            u[t, 1:3] = (c[t + 1, :2] - c[t, :2]) / 2
    serves, gap = [], -n                                                      # frames without a ball before t
    for t in range(1, n - 1):
        gap = -n if not same[t - 1] else 0 if pres[t - 1] else gap + 1        # unknown at an episode's start
        if pres[t] and gap >= 8 and same[t] and pres[t + 1]:
            serves.append([(c[t, BY] - CENTRE[1]) / Predictor.SCALE, *u[t, 1:3], gap, c[t, BX], c[t - gap - 1, BX],
                           (c[t, OT] + c[t, OB]) / 2])
    return u, np.array(serves, np.float32).reshape(-1, len(SERVE_COLS))


def pred_windows(data: FrameData, length: int, which: str) -> np.ndarray:
    """Starts of the predictor's windows (model.context + pred.unroll frames) inside one episode of `data`;
    a set without one is refused."""
    starts = data.starts(length)
    if len(starts) == 0:
        raise UsageError(f"no {which} episode holds {length} consecutive frames (model.context + pred.unroll): "
                         f"use longer episodes or lower them")
    return starts


def window_batch(starts: np.ndarray, length: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Index windows of `length` consecutive frames inside one episode: int (B, length)."""
    pick = starts[rng.integers(len(starts), size=batch_size)]
    return pick[:, None] + np.arange(length)[None]

# ------------------------------------------------------------------------------------ training loops


def make_optimizer(cfg: Config, phase: str, params) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    o, pc = cfg.optim, getattr(cfg, phase)
    lr, steps = cfg.lr(phase), pc.steps
    opt = torch.optim.AdamW(params, lr=lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
    if pc.schedule == "one_cycle":
        # At least 2 warm-up steps: OneCycleLR divides by zero when warm-up rounds to one step.
        pct = min(max(o.warmup, 2 / steps), 0.5) if steps > 2 else 0.75
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=pct)
    else:
        warm = max(1, round(o.warmup * steps))
        def factor(i: int) -> float:  # linear warm-up, then cosine to zero (or flat)
            if pc.schedule == "constant":
                return 1.0
            # a Python float: a numpy scalar in the scheduler's state makes the checkpoint unloadable (weights_only)
            return (i + 1) / warm if i < warm else 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, steps - warm)))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return opt, sched


def point_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    """Elementwise error, not reduced: squared or Huber."""
    if kind == "huber":
        return F.huber_loss(pred, target, reduction="none", delta=delta)
    return (pred - target) ** 2


@torch.no_grad()
def max_pool3(x: torch.Tensor) -> torch.Tensor:
    """3x3 max filter of (B, 1, H, W) as shifted maxima: ~20x faster than max_pool2d's CPU kernel (no indices)."""
    p = F.pad(x, (1, 1, 1, 1), value=-1.0)
    h = torch.maximum(torch.maximum(p[..., :, :-2], p[..., :, 1:-1]), p[..., :, 2:])
    return torch.maximum(torch.maximum(h[..., :-2, :], h[..., 1:-1, :]), h[..., 2:, :])


def max3_at(x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """The 3x3 maximum of x (B, H, W) around the pixels at (M, 3) (b, y, x): max_pool2d(x, 3, 1, 1) there, with the
    same gradient (to the window's first maximum in row-major order), the argmax found without autograd."""
    B, H, W = x.shape
    p = F.pad(x, (1, 1, 1, 1), value=-math.inf).flatten()                      # (B * (H + 2) * (W + 2),)
    b, y, x0 = at.unbind(1)
    corner = (b * (H + 2) + y) * (W + 2) + x0                                   # (M,) the window's top left, padded
    off = (torch.arange(3, device=x.device)[:, None] * (W + 2) + torch.arange(3, device=x.device)).flatten()   # (9,)
    with torch.no_grad():
        win = corner[:, None] + off                                            # (M, 9) row-major
        src = win.gather(1, p[win].argmax(1, keepdim=True))[:, 0]               # (M,) argmax: its first maximum
    return p[src]


def peak_term(recon: torch.Tensor, target: torch.Tensor, bright: float) -> torch.Tensor:
    """Max-pooled 3x3 images must match too: a ball placed 1 px off costs little here, a ball smeared dim over its
    possible positions (the MSE-optimal hedge) costs a lot. The squared error of the pooled images (B, 84, 84)
    where either is brighter than `bright`, averaged over all pixels: found only where the pooled images differ
    (the walls, drawn as the background, are most bright pixels and never differ), with max_pool2d's value and
    gradient (max_pool2d's CPU kernel over whole frames took ~7-17 ms of a ~140 ms autoencoder step)."""
    with torch.no_grad():
        pt, pr = max_pool3(target[:, None])[:, 0], max_pool3(recon.detach()[:, None])[:, 0]
        at = (((pt > bright) | (pr > bright)) & (pr != pt)).nonzero()                  # (M, 3)
    return (max3_at(recon, at) - pt[at.unbind(1)]).pow(2).sum() / recon.numel()


def pixel_loss(recon: torch.Tensor, target: torch.Tensor, bg: torch.Tensor, c: AEConfig,
               band: torch.Tensor | None = None) -> torch.Tensor:
    """Object-weighted error of reconstructions (B, 84, 84) of target frames (B, 84, 84), both 0..1:
    plain MSE on a grey Pong screen ignores the 2-pixel ball.

    Pixels where the target or the reconstruction leaves the background `bg` weigh 1 + fg_weight, and
    bright ones (the ball) bright_weight more: missing an object and drawing a ghost both cost. `band`
    (84, 84), if given, marks the score band, whose squared error weighs band_weight more; peak_term
    weighs peak_weight.
    """
    r = recon.detach()
    fg = ((target - bg).abs() > c.fg_threshold) | ((r - bg).abs() > c.fg_threshold)
    bright = fg & ((target > c.bright_threshold) | (r > c.bright_threshold))
    w = 1 + c.fg_weight * fg.float() + c.bright_weight * bright.float()
    sq = (recon - target) ** 2
    loss = (w * (sq if c.loss == "mse" else point_loss(recon, target, c.loss, c.huber_delta))).mean()
    if band is not None and c.band_weight > 0:
        loss = loss + c.band_weight * (band * sq).mean()
    if c.peak_weight > 0:
        loss = loss + c.peak_weight * peak_term(recon, target, c.bright_threshold)
    if c.margin_weight > 0:
        # The ball is the only thing this bright, and the probe (like a viewer) tells it by brightness:
        # a paddle drawn 6 grey levels too bright became a 'ball' in every ghost we counted, and most
        # missed balls were drawn just too dim. Squared hinges keep both classes clear of the threshold:
        # a ball's pixel drawn under its own brightness (up to the threshold + margin), any other drawn
        # over the threshold - margin.
        with torch.no_grad():
            ball = target > c.bright_threshold
            cap = target.clamp(max=c.bright_threshold + c.margin)
        hinge = F.relu(torch.where(ball, cap - recon, recon - (c.bright_threshold - c.margin)))
        loss = loss + c.margin_weight * hinge.pow(2).mean()
    return loss


def coordinate_loss(c: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent coordinates (B, >= 7) against object_labels (B, 7): Huber in pixels on the positions (the
    ball's only where it is present), and the binary cross-entropy of the ball's presence logit."""
    has = labels[:, BP]
    err = F.huber_loss(c[:, POS], labels[:, POS], reduction="none", delta=1.0)         # (B, 6)
    mask = torch.ones_like(err)
    mask[:, :2] = has[:, None]
    return (err * mask).sum() / shared(mask.sum()), F.binary_cross_entropy_with_logits(c[:, BP], has)


def ae_loss(ae: nn.Module, frames: torch.Tensor, labels: torch.Tensor, c: AEConfig,
            plain: Autoencoder | None = None) -> tuple[torch.Tensor, dict]:
    """The autoencoder's loss on uint8 (B, 84, 84) frames and their object_labels (B, 7): the pixel
    loss plus the coordinate loss that pins the latent's object dims to the probe's positions
    (unsupervised keypoints drifted 9-24 px in a 600-step study). `ae` may be a compiled or distributed
    module; `plain` is then the Autoencoder itself (its background, and its score band: Pong's only)."""
    target = frames.float() / 255                                            # (B, 84, 84)
    recon, z = ae(frames)
    recon = recon.float()
    plain = ae if plain is None else plain
    coord, presence = coordinate_loss(z.float(), labels)
    loss = (pixel_loss(recon, target, plain.background, c, plain.band if plain.objects else None)
            + c.coord_weight * coord + c.presence_weight * presence)
    return loss, {"mse": F.mse_loss(recon.detach(), target), "coord": coord.detach(), "recon": recon.detach(),
                  "z": z.detach()}


def _background(frames: np.ndarray, n: int = 4096) -> np.ndarray:
    """Per-pixel median of up to n evenly spaced frames (a dataset on disk is never read whole)."""
    idx = evenly(len(frames), n)
    return np.median(frames[idx], axis=0).astype(np.float32) / 255                   # (84, 84)


def train_autoencoder(cfg: Config, train: FrameData, val: FrameData, num_actions: int | None = None,
                      progress: bool = True, run: "Run | None" = None, resume: dict | None = None,
                      probed: dict | None = None) -> tuple[WorldModel, list[dict]]:
    """Loop 1: fit the autoencoder on single frames. Returns a WorldModel (predictor untrained) and the
    validation history. `run` writes metrics, pictures and checkpoints; `resume` is a checkpoint dict;
    `probed`: probe() of the training frames, if already found (else each batch is probed)."""
    torch.manual_seed(cfg.train.seed)
    dev = train_device(cfg.check_host())
    wm = WorldModel(cfg, num_actions or train.num_actions, train.game).to(dev)
    ae = wm.ae
    ae.background.copy_(torch.from_numpy(_background(train.frames)))
    opt, sched = make_optimizer(cfg, "ae", ae.parameters())
    prec, net = Precision(cfg, dev), data_parallel(torch.compile(ae) if cfg.train.compile else ae, dev, not wm.objects)
    first, best = 1, float("inf")
    if resume is not None:
        first, best = restore(resume, "ae", wm, opt, sched) + 1, resume["best"]
    if not wm.objects:      # no probe for this game: pixels only
        cfg = replace(cfg, ae=replace(cfg.ae, coord_weight=0.0, presence_weight=0.0, returned_ball_weight=0.0))
    val_x = torch.from_numpy(val.frames[evenly(len(val), cfg.eval.val_frames)])
    val_labels = torch.from_numpy(object_labels(probe(val_x.numpy()))).to(dev)
    loader = frame_loader(cfg, train, first, probed if wm.objects else None)
    history = []

    def validate(step: int) -> float:
        ae.eval()
        with torch.no_grad():
            vloss, m = ae_loss(ae, val_x.to(dev), val_labels, cfg.ae)
        recon = to_uint8(m["recon"])                                        # what wm.reconstruct(val_x) returns
        ok = object_agreement(val_x.numpy(), recon) if wm.objects else {}
        row = {"phase": "ae", "step": step, "val_loss": vloss.item(), "recon_coord": m["coord"].item(),
               "recon_mse": pixel_mse(recon, val_x.numpy()),
               **{f"recon_{k}": float(v.mean()) for k, v in ok.items()}}
        history.append(row)
        if run is not None:
            run.log_val(row)
            pick = evenly(len(val_x), 8)
            run.image(f"ae_step{step:06d}.png", strip(val_x.numpy()[pick], recon[pick]))
        return row["val_loss"]

    if first == 1 and rank_world()[0] == 0:
        best = validate(0)
    bar = tqdm(loader, desc="autoencoder", disable=not progress or rank_world()[0] > 0, mininterval=1.0,
               initial=first - 1, total=cfg.ae.steps)
    meter = Meter()
    with one_thread(dev.type == "cpu"):    # a step of 64 small frames gains nothing from a second thread (114 vs 141 ms)
        for step, (x, labels) in enumerate(bar, first):
            ae.train()
            with prec.autocast():
                loss, m = ae_loss(net, x.to(dev, non_blocking=True), labels.to(dev), cfg.ae, ae)
            prec.step(loss, opt, sched, cfg.ae.grad_clip)
            meter.add(len(x), loss=loss.detach(), mse=m["mse"], coord=m["coord"])
            best = end_of_step(cfg, "ae", step, meter, sched, bar, run, validate, wm, opt, best)
    return wm.eval(), history


@torch.no_grad()
def encode_all(wm: WorldModel, frames: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """uint8 (N, 84, 84) -> latents (N, D) with the frozen encoder (reads frames on disk in chunks)."""
    wm.eval()
    # Written into one preallocated tensor: a list of small long-lived results interleaved with the big
    # per-batch temporaries fragments the heap, and RSS grew by ~14 MB a batch (8.6 GB for 270k frames).
    out = torch.empty(len(frames), wm.cfg.model.latent_dim, device=wm.device)            # (N, D)
    for i in tqdm(range(0, len(frames), batch_size), desc="encoding", disable=len(frames) < 50_000, leave=False):
        out[i:i + batch_size] = wm.ae.encode(torch.from_numpy(np.ascontiguousarray(frames[i:i + batch_size])).to(wm.device))
    return out


class Latents:
    """What the predictor reads of each frame of a set: coordinates c (7), normalised global code g (G)
    and serve input u (4). rows(w) gathers them for frame indices w (B, L). Kept in memory, or, given a
    folder, as float32 rows in files read per batch with os.preadv, so that memory does not grow with the
    set (pred.latents_on_disk_above). Both give the same batches (tests/test_distributed.py)."""

    def __init__(self, wm: WorldModel, data: FrameData, folder: Path | None = None, chunk: int = 8192,
                 labels: np.ndarray | None = None):
        self.wm, self.n, self.D = wm, len(data), wm.cfg.model.latent_dim
        self.z = self.u = self.labels = None
        if labels is not None:      # the probe's object_labels (N, 7) stand for the coordinates, the global code is 0
            self.labels = torch.from_numpy(labels).to(wm.device)
        elif folder is None:
            self.z = encode_all(wm, data.frames)                                     # (N, D)
        else:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.files = [Path(folder) / "z.f32", Path(folder) / "u.f32"]
            self.sums = torch.zeros(2, self.D - NC, dtype=torch.float64)             # the global code's moments
            with open(self.files[0], "wb") as fh:
                for i in range(0, self.n, chunk):
                    z = encode_all(wm, data.frames[i:i + chunk]).cpu()
                    self.sums += torch.stack([z[:, NC:].double().sum(0), z[:, NC:].double().pow(2).sum(0)])
                    fh.write(z.numpy().tobytes())
            self.fds = [os.open(self.files[0], os.O_RDONLY)]
        # Serve inputs episode by episode (an episode's coordinates at a time), the serves, the ball's and the opponent's
        # steps seen.
        u, serves, steps, gaps, opps, plays = [], [], [], [], [], []
        pong = data.num_actions == len(PONG_DIRECTION)
        for e in data.episode_slices():
            c, ep = latent_table(wm, self._z(torch.arange(e.start, e.stop)))[0].cpu().numpy(), np.asarray(data.episode[e])
            ue, se = serve_inputs(c, ep)
            u.append(ue), serves.append(se), steps.append(ball_steps(c, ep)), gaps.append(gap_waits(c, ep, ue, wm.context))
            opps.append(opp_steps(c, ep))
            if pong:
                plays.append(play_steps(c, ep, np.asarray(data.actions[e])))
        self.serves = np.concatenate(serves)
        self.step_keys, self.steps = (np.concatenate(x) for x in zip(*steps))           # the ball's steps seen
        self.gap_keys, self.gap_waits, self.gap_serves = (np.concatenate(x) for x in zip(*gaps))  # the serves after a gap
        self.opp_keys, self.opp_steps, self.opp_counts = distinct(opps, len(OPP_KEY))     # the paddles' steps seen
        self.play_keys, self.play_steps, self.play_counts = distinct(plays, len(PLAY_KEY))
        if folder is None:
            self.u = torch.from_numpy(np.concatenate(u)).to(wm.device)
        else:
            with open(self.files[1], "wb") as fh:
                fh.writelines(x.tobytes() for x in u)
            self.fds.append(os.open(self.files[1], os.O_RDONLY))

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation (+ 1e-3) of the global code over the set, for normalising it."""
        if self.labels is not None:
            zero = torch.zeros(self.D - NC, device=self.wm.device)
            return zero, zero + 1e-3
        if self.z is not None:
            return self.z[:, NC:].mean(0), self.z[:, NC:].std(0) + 1e-3
        mean = self.sums[0] / self.n
        std = ((self.sums[1] - self.n * mean ** 2).clamp(min=0) / max(self.n - 1, 1)).sqrt()
        return mean.float().to(self.wm.device), std.float().to(self.wm.device) + 1e-3

    def rows(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frame indices w (...) -> c (..., 7), g (..., G), u (..., 4) on the model's device."""
        c, g = latent_table(self.wm, self._z(w))
        u = self.u[w] if self.u is not None else _read_rows(self.fds[1], w, 4).to(self.wm.device)
        return c, g, u

    def _z(self, w: torch.Tensor) -> torch.Tensor:
        if self.labels is not None:
            c = self.labels[w]
            return torch.cat([c, c.new_zeros(*c.shape[:-1], self.D - NC)], -1)
        return self.z[w] if self.z is not None else _read_rows(self.fds[0], w, self.D).to(self.wm.device)

    def close(self) -> None:
        for fd in getattr(self, "fds", []):
            os.close(fd)
        for f in getattr(self, "files", []):
            f.unlink(missing_ok=True)


def distinct(parts: list[tuple[np.ndarray, np.ndarray]], width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tables of keys (M, width) and steps (M, 2), one per episode -> each distinct row once: keys, steps, and how many
    windows had it (float32). Random play repeats its points: the table stays small, the counts keep their weight."""
    if not parts:
        return np.zeros((0, width), np.float32), np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
    rows, n = np.unique(np.concatenate([np.concatenate(x) for x in zip(*parts)], 1), axis=0, return_counts=True)
    return rows[:, :-2], rows[:, -2:], n.astype(np.float32)


def _read_rows(fd: int, w: torch.Tensor, width: int) -> torch.Tensor:
    """float32 rows w (...) of a file of rows `width` wide -> (..., width); each distinct row read once."""
    uniq, inv = np.unique(w.reshape(-1).numpy(), return_inverse=True)
    buf = np.empty((len(uniq), width), np.float32)
    for j, r in enumerate(uniq):
        os.preadv(fd, [buf[j]], int(r) * width * 4)
    return torch.from_numpy(buf[inv].reshape(*w.shape, width))


@torch.no_grad()
def latent_table(wm: WorldModel, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the predictor reads of each frame's latent (..., D): coordinates (..., 7) with hard ball
    presence (0/1), and the global code (..., G), normalised by the predictor's statistics."""
    c = z[..., :NC].clone() if wm.objects else torch.zeros_like(z[..., :NC])   # no probe, no objects: zeros
    c[..., BP] = (c[..., BP] > 0).float()
    p = wm.predictor
    return c, (z[..., NC:] - p.gmean) / p.gstd


def pred_loss(p: nn.Module, c: torch.Tensor, g: torch.Tensor, actions: torch.Tensor, u: torch.Tensor,
              pc: PredConfig, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Open-loop error over pc.unroll steps of windows: c (B, K + U, 7), g (B, K + U, G), actions
    (B, K + U), u (B, K + U, 4). Coordinates: Huber in pixels (the ball's x, y weigh pc.ball_weight,
    where it is present, with delta pc.ball_delta); presence, and the turn where the ball is at a paddle's
    face: cross-entropy; global code: pc.loss. With `noise`, the context
    is jittered first (noise (B, K * 6 + G), standard normal, from predictor_batch), so the predictor
    learns to recover from its own small errors."""
    K, U = p.context, pc.unroll
    ctx, gl = c[:, :K].clone(), g[:, K - 1]
    if noise is not None:
        ctx[:, :, POS] += pc.noise_px * noise[:, :K * 6].view(-1, K, 6)
        gl = gl + pc.noise_global * noise[:, K * 6:]
    nxts, gls, turns = [], [], []
    for s in range(U):
        nxt, gl, turn = p(ctx, gl, actions[:, s:s + K], u[:, s + K - 1])
        nxts.append(nxt)
        gls.append(gl)
        turns.append(turn)
        fed = torch.where(p.bpcol, (nxt > 0).float(), nxt)                    # what a dream feeds back: presence 0/1
        ctx = torch.cat([ctx[:, 1:], fed[:, None]], 1)
    # The losses of all U steps at once (fewer, larger operations: the step is bound by their count).
    nxt, gl, tgt = torch.stack(nxts, 1).float(), torch.stack(gls, 1).float(), c[:, K:K + U]   # (B, U, 7), (B, U, G)
    w_ball = tgt[..., BP] * pc.ball_weight                                    # (B, U) the ball's weight where present
    norm = shared(2 * w_ball.sum(0) + 4 * len(c))                           # (U,) the weights' sums (all ranks)
    # Pixels. The ball: nearly L1 down to pc.ball_delta px (tracking needs its position exact, not just
    # close); the paddles' edges: delta 1 px.
    ball = F.huber_loss(nxt[..., :2], tgt[..., :2], reduction="none", delta=pc.ball_delta) / pc.ball_delta
    edges = F.huber_loss(nxt[..., BP + 1:], tgt[..., BP + 1:], reduction="none", delta=1.0)
    coord = (((ball * w_ball[..., None]).sum((0, 2)) + edges.sum((0, 2))) / norm).sum()
    presence = F.binary_cross_entropy_with_logits(nxt[..., BP], tgt[..., BP], reduction="none").mean(0).sum()
    # The turn, where the ball is at a paddle's face: did the recorded ball's horizontal step reverse into the
    # predicted frame (3 frames with a ball)?
    rx, rp = c[:, K - 2:K + U, BX], c[:, K - 2:K + U, BP]                     # (B, U + 2)
    step = rx[:, 1:] - rx[:, :-1]
    turned = ((step[:, 1:] * step[:, :-1] < 0) & (rp[:, 2:] * rp[:, 1:-1] * rp[:, :-2] > 0.5)).float()  # (B, U)
    tl = torch.stack(turns, 1).float()                                        # (B, U, 2) logit, at a face
    turn = (F.binary_cross_entropy_with_logits(tl[..., 0], turned, reduction="none") * tl[..., 1]).sum(0)
    turn = (turn / shared(tl[..., 1].sum(0)).clamp(min=1 / rank_world()[1])).sum()   # at least 1 face in all ranks
    glob = point_loss(gl, g[:, K:K + U], pc.loss, pc.huber_delta).mean((0, 2)).sum()
    return (coord + presence + turn + pc.global_weight * glob) / U, {"coord": coord / U, "presence": presence / U,
                                                                     "turn": turn / U, "global": glob / U}


class Unrolled(nn.Module):
    """pred_loss as one module call, so that DistributedDataParallel sees one forward per step."""

    def __init__(self, p: nn.Module):
        super().__init__()
        self.p = p

    def forward(self, *args):
        return pred_loss(self.p, *args)


def train_predictor(cfg: Config, wm: WorldModel, train: FrameData, val: FrameData, progress: bool = True,
                    run: "Run | None" = None, resume: dict | None = None, beside: "Beside | None" = None,
                    probed: dict | None = None, table: tuple[np.ndarray, np.ndarray] | None = None
                    ) -> tuple[WorldModel, list[dict]]:
    """Loop 2, on windows that never cross an episode end, the encoder frozen. Its first phase, 'pred',
    reads pred.coords: the probe's positions of the objects in the recorded frames (Pong; no autoencoder
    needed: `beside` hands over the same phase run by a second process while loop 1 trained) or the
    encoder's latents. Then 'tune' goes on for tune.steps on the encoder's own latents: the global code
    (the score band), and the encoder's small errors, which dreams start from. `probed`: probe() of the
    training frames, if already found; `table`: table_rows of frames recorded for the ball's step table, added to
    the trained predictor (add_table)."""
    torch.manual_seed(cfg.train.seed + 1)
    cfg.check_host()
    for prm in wm.ae.parameters():
        prm.requires_grad_(False)
    on_probe = cfg.pred.coords == "probe" and wm.objects
    at = (resume["phase"], int(resume["step"])) if resume is not None else ("pred", 0)
    big = len(train) > cfg.pred.latents_on_disk_above                # latents in files: memory stays flat
    folder = Path(tempfile.mkdtemp(prefix="latents-", dir=run.path if run else None)) if big else None
    lat = vlat = None
    history = []
    try:
        # The encoder's latents first: while the phase beside loop 1 finishes, this process has a core to spare.
        lat, vlat = Latents(wm, train, folder and folder / "train"), Latents(wm, val, folder and folder / "val")
        if at[0] == "pred" and on_probe and (beside is not None or at[1] < cfg.pred.steps):
            history += fit_on_probe(cfg, wm, train, val, progress, run, resume if at[1] else None, beside, probed)
            resume = None
        if at[0] == "pred" and not on_probe:
            history += _train_predictor(cfg, wm, train, val, lat, vlat, progress, run, resume)
            resume = None
        if on_probe and at[0] != "tune":        # the global code was 0 until now: its projection starts from 0
            nn.init.zeros_(wm.predictor.gp.weight)
        if cfg.tune.steps > 0:
            history += _train_predictor(cfg, wm, train, val, lat, vlat, progress, run, resume if at[0] == "tune" else None,
                                        phase="tune")
        else:
            adopt(wm.predictor, lat)
            if run is not None and on_probe:    # 'pred' wrote its checkpoints with the probe's statistics: the encoder's
                weights = dict(wm.named_parameters())
                run.restamp(wm, [k for k in wm.state_dict() if k.startswith("predictor.") and k not in weights]
                            + ["predictor.gp.weight"])
        add_table(wm, table, run)
        return wm.eval(), history
    finally:
        for x in (lat, vlat):
            if x is not None:
                x.close()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def fit_on_probe(cfg: Config, wm: WorldModel, train: FrameData, val: FrameData, progress: bool = True,
                 run: "Run | None" = None, resume: dict | None = None, beside: "Beside | None" = None,
                 probed: dict | None = None) -> list[dict]:
    """Loop 2's first phase on the probe's coordinates of the recorded frames (object_labels), the global
    code 0 (it has no loss here: tune learns it). With `beside`, the result of the same phase from the
    second process: its predictor, its metric rows and a checkpoint, as if it had run here."""
    p = wm.predictor
    if beside is not None:
        out = beside.result()
        p.load_state_dict(out["predictor"])
        opt, sched = make_optimizer(cfg, "pred", p.parameters())
        opt.load_state_dict(out["optimizer"])
        sched.load_state_dict(out["scheduler"])
        torch.set_rng_state(out["rng"])
        if run is not None:
            for row in out["rows"]:
                run.log(row)
            for row in out["history"]:
                run.log_val(row)
            run.checkpoint(wm, "pred", cfg.pred.steps, opt, sched, out["history"][-1]["val_loss"], out["best"])
        return out["history"]
    labels = object_labels(probe(train.frames) if probed is None else probed)
    return _probe_phase(cfg, wm, train, val, labels, object_labels(probe(val.frames)), progress, run, resume)


def _probe_phase(cfg: Config, wm: WorldModel, train: FrameData, val: FrameData, labels: np.ndarray,
                 vlabels: np.ndarray, progress: bool, run, resume: dict | None, state: dict | None = None
                 ) -> list[dict]:
    """fit_on_probe's training, here or in the process beside loop 1: object_labels (N, 7) of the training
    and held-out frames stand for the latents' coordinates, and the global code, 0, has no loss."""
    pc = replace(cfg, pred=replace(cfg.pred, global_weight=0.0, noise_global=0.0))
    return _train_predictor(pc, wm, train, val, Latents(wm, train, labels=labels), Latents(wm, val, labels=vlabels),
                            progress, run, resume, pictures=False, state=state)


class Later:
    """A Run's stand-in for a phase trained in another process: it keeps the metric rows (written by the
    main process when the phase is handed over) and writes no checkpoint."""

    def __init__(self):
        self.rows = []

    def log(self, row: dict) -> None:
        self.rows.append(row)

    def log_val(self, row: dict) -> None:
        pass                            # the phase's history holds them

    def checkpoint(self, wm, phase, step, opt, sched, val_loss: float, best: float) -> float:
        return min(best, val_loss)

    def restamp(self, wm, keys: list[str]) -> None:
        pass


class Beside:
    """Loop 2's first phase (pred.coords=probe) in a second process, started before loop 1: it reads the
    probe's coordinates, not the autoencoder, so on a CPU with two cores both loops train at once, one
    thread each (each loop's step is too small to gain from a second thread). The result is the one the
    phase gives in-process (tests/test_training.py). result() waits for it. The process (a FreshProcess:
    a script without a main guard is not re-run) starts before the frames are recorded (its imports take
    seconds) and waits for send()."""

    def __init__(self):
        from data.d4rl_frames import FreshProcess
        self.child = FreshProcess("world_model", "_beside")
        self.peak_rss_mb = float("nan")

    def send(self, cfg: Config, train: FrameData, val: FrameData, probed: dict) -> None:
        """The phase's inputs: the config and the probe's labels, actions and episodes of both sets."""
        parts = [(object_labels(p), d.actions, d.episode) for d, p in ((train, probed), (val, probe(val.frames)))]
        self.child.send((cfg, train.game, train.num_actions, parts))

    def result(self) -> dict:
        rc, folder = self.child.wait(), self.child.dir
        try:
            if rc != 0 or not (folder / "out.pt").is_file():
                err = folder / "error.txt"
                why = err.read_text().strip() if err.is_file() else f"it ended with exit code {rc} and no result"
                if why.startswith("error: "):                     # a UsageError: one line, as in this process
                    raise UsageError(why.removeprefix("error: "))
                raise RuntimeError(f"loop 2's process beside loop 1 failed: {why}")
            res = torch.load(folder / "out.pt", weights_only=True)
        finally:
            self.child.stop()
        self.peak_rss_mb = res["peak_rss_mb"]
        return res

    def stop(self) -> None:
        self.child.stop()


def _beside() -> None:
    """The second process (sys.argv[1]: Beside's folder): loop 2's first phase on the labels (frames are
    not needed; the inputs come on stdin), the result written to out.pt, or what went wrong to error.txt."""
    import pickle
    import traceback
    from data.d4rl_frames import child_folder
    folder = child_folder()                            # Ctrl-C is the main process's: it stops this one
    os.environ.pop("WM_DIE_AT", None)                  # so is the crash-test hook
    try:
        cfg, game, num_actions, parts = pickle.load(sys.stdin.buffer)
        torch.set_num_threads(1)
        torch.manual_seed(cfg.train.seed)                  # the predictor starts as train_autoencoder's WorldModel's
        wm = WorldModel(cfg, num_actions, game).to(train_device(cfg))
        torch.manual_seed(cfg.train.seed + 1)              # as train_predictor
        (lt, at, et), (lv, av, ev) = parts
        blank = lambda n: np.broadcast_to(np.zeros((1, 84, 84), np.uint8), (n, 84, 84))   # noqa: E731 (frames unused)
        train = FrameData(blank(len(lt)), at, et, None, game, num_actions)
        val = FrameData(blank(len(lv)), av, ev, None, game, num_actions)
        run, state = Later(), {}
        history = _probe_phase(cfg, wm, train, val, lt, lv, False, run, None, state)
        torch.save(dict(predictor=wm.predictor.state_dict(), rows=run.rows, history=history, rng=torch.get_rng_state(),
                        best=min(r["val_loss"] for r in history), peak_rss_mb=peak_rss_mb(), **state), folder / "out.tmp")
        os.replace(folder / "out.tmp", folder / "out.pt")
    except UsageError as e:
        (folder / "error.txt").write_text(f"error: {e}")
        sys.exit(2)
    except BaseException:  # noqa: BLE001 (the main process reports it)
        (folder / "error.txt").write_text(traceback.format_exc())
        sys.exit(1)


def adopt(p: Predictor, lat: Latents) -> None:
    """The predictor's statistics of a set's latents: the global code's mean and spread, the serves seen, the
    ball's steps seen (ball_steps), the waits for a serve and the serves after them (gap_waits), the opponent's steps
    (opp_steps, each distinct row once with its count), and 512 of its (normalised) global codes, which dreams draw
    their score band from."""
    mean, std = lat.stats()
    p.gmean.copy_(mean)
    p.gstd.copy_(std)
    if len(lat.serves):
        p.serves = torch.from_numpy(lat.serves).to(p.gmean.device)
    if lat.labels is not None or not len(p.steps):   # the probe's steps, once had, are kept (tune's are noisier)
        p.step_keys, p.steps = (torch.from_numpy(x).to(p.gmean.device) for x in (lat.step_keys, lat.steps))
        p.gap_keys, p.gap_waits, p.gap_serves = (torch.from_numpy(x).to(p.gmean.device)
                                                 for x in (lat.gap_keys, lat.gap_waits, lat.gap_serves))
        p.opp_keys, p.opp_steps, p.opp_counts = (torch.from_numpy(np.ascontiguousarray(x)).to(p.gmean.device)
                                                 for x in (lat.opp_keys, lat.opp_steps, lat.opp_counts))
        p.opp_weights = torch.tensor(OPP_KEY, device=p.gmean.device)          # the weights opp_steps built them with
        p.opp_next = torch.tensor(True, device=p.gmean.device)
        p.play_keys, p.play_steps, p.play_counts = (torch.from_numpy(np.ascontiguousarray(x)).to(p.gmean.device)
                                                    for x in (lat.play_keys, lat.play_steps, lat.play_counts))
        p.play_weights = torch.tensor(PLAY_KEY, device=p.gmean.device)
    p.codes = lat.rows(torch.from_numpy(evenly(lat.n, 512)))[1].clone()


def _train_predictor(cfg: Config, wm: WorldModel, train: FrameData, val: FrameData, lat: Latents, vlat: Latents,
                     progress: bool, run: "Run | None", resume: dict | None, phase: str = "pred", pictures: bool = True,
                     state: dict | None = None) -> list[dict]:
    """One phase of loop 2 on the latents `lat` (validation: `vlat`); returns its validation rows. Without
    `pictures` (the autoencoder may not be trained yet) validation computes the losses only; `state`, if
    given, receives the optimizer's and scheduler's final states."""
    p, dev, K, U = wm.predictor, wm.device, cfg.model.context, cfg.pred.unroll
    adopt(p, lat)
    a_train, a_val = torch.from_numpy(np.asarray(train.actions)).to(dev), torch.from_numpy(np.asarray(val.actions)).to(dev)
    starts, vstarts = pred_windows(train, K + U, "training"), pred_windows(val, K + U, "held-out")
    vwin = torch.from_numpy(vstarts[evenly(len(vstarts), 512), None] + np.arange(K + U)[None])   # (V, K + U)
    vc, vg, vu = vlat.rows(vwin)
    opt, sched = make_optimizer(cfg, phase, p.parameters())
    prec, net = Precision(cfg, dev), data_parallel(Unrolled(torch.compile(p) if cfg.train.compile else p), dev)
    first, best = 1, float("inf")
    if resume is not None:
        first, best = restore(resume, phase, wm, opt, sched) + 1, resume["best"]
    vs = val.starts(K + 1)
    vone = vs[evenly(len(vs), 8)]                                                       # one-step picture starts
    vvid = val.starts(K + cfg.eval.video_frames)[:1]                                    # the video's start, if any
    history = []

    def validate(step: int) -> float:
        p.eval()
        with torch.no_grad():
            one = replace(cfg.pred, unroll=1)
            v1 = pred_loss(p, vc, vg, a_val[vwin], vu, one)[0].item()
            vun = pred_loss(p, vc, vg, a_val[vwin], vu, cfg.pred)[0].item()
        row = {"phase": phase, "step": step, "val_loss": vun, "pred_1step": v1}
        if pictures:                                   # decoded predictions: the autoencoder is trained
            with torch.no_grad():
                w = vone[:, None] + np.arange(K)[None]                               # (8, K)
                nxt = to_uint8(wm.dream_step(wm.encode_context(torch.from_numpy(val.frames[w])),
                                             a_val[torch.from_numpy(w)])[1])         # teacher-forced next frames
            real = np.asarray(val.frames[vone + K])
            ok = object_agreement(real, nxt) if wm.objects else {}
            row |= {"pred_1step_mse": pixel_mse(nxt, real), **{f"pred_{k}": float(v.mean()) for k, v in ok.items()}}
        history.append(row)
        if run is not None:
            run.log_val(row)
        if run is not None and pictures:
            run.image(f"{phase}_step{step:06d}.png", strip(real, nxt))
            if len(vvid):
                s, H = int(vvid[0]), cfg.eval.video_frames
                dream = wm.rollout(val.frames[s:s + K], val.actions[s + K - 1:s + K - 1 + H], val.actions[s:s + K - 1])
                run.video(f"{phase}_step{step:06d}", panels([val.frames[s + K:s + K + H], dream], ["real  t={t}", "dream"]))
        return vun

    if first == 1 and rank_world()[0] == 0:
        best = validate(0)
    steps = getattr(cfg, phase).steps
    bar = tqdm(range(first, steps + 1), desc="predictor" if phase == "pred" else "predictor, tuning", mininterval=1.0,
               disable=not progress or rank_world()[0] > 0, initial=first - 1, total=steps)
    meter = Meter()
    with one_thread(dev.type == "cpu"):
        for step in bar:
            p.train()
            w, a, noise = (my_part(x) for x in predictor_batch(cfg, starts, a_train, step, phase))   # (B, K + U) ...
            with prec.autocast():
                c, g, u = lat.rows(w)                                               # (B, K + U, ...)
                loss, parts = net(c, g, a, u, cfg.pred, noise)
            prec.step(loss, opt, sched, cfg.pred.grad_clip)
            meter.add(len(w), loss=loss.detach(), coord=parts["coord"].detach())
            best = end_of_step(cfg, phase, step, meter, sched, bar, run, validate, wm, opt, best)
    if state is not None:
        state.update(optimizer=opt.state_dict(), scheduler=sched.state_dict())
    return history


# ------------------------------------------------------------------------------------ pipeline and command line


def table_sets(cfg: Config) -> list[tuple[str, int, int, str]]:
    """What to record for the ball's step table only (record_sets): data.table_steps of tracker play, seed
    data.table_seed; Pong from ALE only, else nothing."""
    d = cfg.data
    return [(d.game, d.table_steps, d.table_seed, "tracker")] if d.source == "ale" and d.table_steps > 0 and d.game == "Pong" else []


def load_data(cfg: Config, table: bool = False) -> tuple[FrameData, ...]:
    """(train, held-out) by data.source: recorded now from ALE with two seeds, or a dataset split by whole episodes.
    With `table`, also the frames recorded only for the ball's step table (table_sets; else None), in the same
    recording processes: (train, held-out, table). (The pipeline records those later, beside loop 2: Recording.)"""
    d = cfg.data
    if d.source == "ale":
        more = table_sets(cfg) if table else []
        out = record_sets([(d.game, d.train_steps, d.seed, d.policy), (d.game, d.val_steps, d.val_seed, d.policy), *more])
        return (*out[:2], out[2] if more else None) if table else tuple(out)
    from data.d4rl_frames import load_source, split_episodes
    return (*split_episodes(load_source(d.source, game=d.game), d.val_fraction), *[None] * table)


def table_rows(data: FrameData | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The ball's step table (ball_steps) of frames recorded only for it, from the probe's coordinates: keys (M, 9),
    steps (M, 2); None without such frames. Dreams look up the ball's step near walls and paddles among these and the
    training frames' windows: more windows of returned balls, nearer neighbours at a paddle's face."""
    if data is None:
        return None
    c, ep = object_labels(probe(data.frames)), np.asarray(data.episode)
    return tuple(np.concatenate(x) for x in zip(*[ball_steps(c[e], ep[e]) for e in data.episode_slices()]))


def add_table(wm: WorldModel, table: tuple[np.ndarray, np.ndarray] | None, run: "Run | None" = None) -> None:
    """Appends table_rows of the frames recorded for the ball's step table to the predictor's steps seen (after the
    training windows', which are all that validation during training looks up), once (a resumed run's checkpoint may
    hold them already), and into the run's checkpoints."""
    if table is None or not len(table[0]):
        return
    p = wm.predictor
    keys, steps = (torch.from_numpy(x).to(p.step_keys) for x in table)
    n = len(keys)
    if not (len(p.step_keys) >= n and torch.equal(p.step_keys[-n:], keys) and torch.equal(p.steps[-n:], steps)):
        p.step_keys, p.steps = torch.cat([p.step_keys, keys]), torch.cat([p.steps, steps])
    if run is not None:
        run.restamp(wm, ["predictor.step_keys", "predictor.steps"])


def check_lengths(cfg: Config, train: FrameData, val: FrameData) -> None:
    """Before training: a training episode must hold the predictor's window, a held-out one the longest
    window the run will need of it."""
    K, e = cfg.model.context, cfg.eval
    pred_windows(train, K + cfg.pred.unroll, "training")
    need = K + max(e.rollout_frames, e.summary_horizon, cfg.pred.unroll)
    if len(val.starts(need)) == 0:
        longest = max((s.stop - s.start for s in val.episode_slices()), default=0)
        fix = ("raise data.val_steps" if cfg.data.source == "ale" else
               f"hold out more episodes (data.val_fraction={cfg.data.val_fraction}) or record longer ones")
        raise UsageError(f"no held-out episode holds {need} frames (model.context + the longest of "
                         f"eval.rollout_frames, eval.summary_horizon, pred.unroll); the longest has {longest}: {fix}, "
                         f"or lower eval.rollout_frames to <= {max(longest - K, 0)}")


def train_and_evaluate(cfg: Config, progress: bool = True, resume: str | Path | None = None) -> dict:
    """The whole pipeline: data, both loops, held-out figures (evaluate.py's quick mode), the assets.
    `resume`: a run folder to continue."""
    from evaluate import evaluate, print_summary
    times, t0 = {}, time.perf_counter()
    ckpt = None
    main_rank = rank_world()[0] == 0                 # under torchrun only rank 0 writes and prints
    if resume is not None and (Path(resume) / "summary.json").is_file():
        if main_rank:
            print(f"{resume} is complete (its summary.json is written): nothing to resume; evaluate it with "
                  f"python world_model.py eval --checkpoint {Path(resume) / 'checkpoints' / 'best.pt'}")
        return json.loads((Path(resume) / "summary.json").read_text())
    run = None
    if resume is not None and main_rank:
        run, ckpt = Run.reopen(resume)
        cfg = run.cfg
    elif resume is not None:                         # the other ranks read the same checkpoint, write nothing
        cfg, ckpt = Run.resumable(Path(resume))
    cfg.check_host()
    loop1 = ckpt is None or ckpt["phase"] == "ae"
    # Loop 2's first phase beside loop 1 (the CPU's second core), when it reads the probe, not the encoder.
    beside = Beside() if (loop1 and cfg.pred.coords == "probe" and cfg.data.game == "Pong" and cfg.train.beside
                          and train_device(cfg).type == "cpu" and (os.cpu_count() or 1) >= 2
                          and rank_world()[1] == 1) else None
    table = None                                     # the step table's frames, recorded beside loop 2
    try:
        train, val = load_data(cfg)
        check_lengths(cfg, train, val)
        if ckpt is not None and ckpt["num_actions"] != train.num_actions:
            raise UsageError(f"the run's model has {ckpt['num_actions']} actions but {cfg.data.source} data of "
                             f"{train.game} has {train.num_actions}: a model only trains on its own game's action set")
        probed = None
        if (cfg.pred.coords == "probe" and train.game == "Pong"
                and (loop1 or (ckpt["phase"] == "pred" and ckpt["step"] < cfg.pred.steps))):   # a phase will read it
            probed = probe(train.frames)           # found once: loop 1's batches and loop 2's coordinates
        if beside is not None and probed is None:      # not Pong's frames after all: loop 2 runs after loop 1
            beside.stop()
            beside = None
        if beside is not None:
            beside.send(cfg, train, val, probed)
        # The ball's step table's frames, recorded in a process of their own at the lowest priority: it runs where
        # training leaves a core idle (loop 2's tuning phase trains on one thread; on a GPU the CPU idles), and the
        # table joins the model at the end of loop 2 (recorded with the training frames, they cost the run ~5 s).
        sets = table_sets(cfg) if main_rank else []
        table = Recording(sets) if sets else None
        times["data"] = time.perf_counter() - t0
        if ckpt is None and main_rank:
            run = Run.create(cfg)
        t = time.perf_counter()
        ae_hist = []
        if loop1:
            wm, ae_hist = train_autoencoder(cfg, train, val, progress=progress, run=run, resume=ckpt, probed=probed)
            ckpt = None
        else:
            wm = WorldModel.from_checkpoint(ckpt).to(train_device(cfg))
        times["autoencoder"] = time.perf_counter() - t
        peak = {"autoencoder": peak_rss_mb()}
        t = time.perf_counter()
        wm, pred_hist = train_predictor(cfg, wm, train, val, progress=progress, run=run, resume=ckpt, beside=beside,
                                        probed=probed)
        if table is not None:
            add_table(wm, table_rows(table.result()[0]), run)
    finally:
        for x in (beside, table):
            if x is not None:
                x.stop()
    times["predictor"] = time.perf_counter() - t       # beside loop 1: what it took after loop 1 ended
    peak["predictor"] = peak_rss_mb()
    if beside is not None:
        peak["beside"] = beside.peak_rss_mb
    if table is not None:
        peak["table"] = table.peak_rss_mb
    if not main_rank:
        return {"rank": rank_world()[0], "times_s": times}
    t = time.perf_counter()
    summary = evaluate(cfg, wm, val, run.path)
    times["eval+assets"] = time.perf_counter() - t
    peak["eval+assets"] = peak_rss_mb()
    times["total"] = time.perf_counter() - t0
    summary.update(run_dir=str(run.path), times_s=times, peak_rss_mb_by_phase_end=peak,
                   val_pred_1step=pred_hist[-1]["pred_1step"] if pred_hist else float("nan"),
                   train_frames=len(train), train_episodes=len(train.episode_slices()))
    run.finish(summary)
    summary.update(ae_history=ae_hist, pred_history=pred_hist)
    if progress:
        print_summary(summary)
    return summary


def _play_main(argv: list[str]) -> int:
    from play import main as play_main
    return play_main(argv)


def _eval_main(argv: list[str]) -> int:
    from evaluate import main as eval_main
    return eval_main(argv)


COMMANDS = {"eval": _eval_main, "play": _play_main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in COMMANDS:
            return COMMANDS[argv[0]](argv[1:])
        ap = Parser(description=__doc__.split("\n")[0],
                                     epilog="overrides: dot-notation keys of Config (config.py), e.g. ae.steps=1000; "
                                     "--show-config lists every field with its default, allowed values and meaning. "
                                     "Other commands: python world_model.py eval --help, python world_model.py play --help")
        ap.add_argument("--config", help="YAML file merged into the defaults before the overrides")
        ap.add_argument("--show-config", action="store_true",
                        help="print the resolved config (defaults, --config, overrides) as YAML and exit")
        ap.add_argument("--resume", metavar="RUN_DIR", help="continue the run in this folder from its last checkpoint")
        ap.add_argument("overrides", nargs="*", help="key=value pairs")
        args = ap.parse_args(argv)
        if args.show_config:
            print(show_config(make_config(args.overrides, args.config)))
            return 0
        cfg = make_config() if args.resume else make_config(args.overrides, args.config)
        distributed = start_distributed(cfg)        # torchrun: one process per rank, same command
        if args.resume:
            if args.overrides or args.config:
                raise UsageError("--resume takes no --config or overrides: a run continues with its own resolved_config.yaml")
            train_and_evaluate(cfg, resume=args.resume)
        else:
            train_and_evaluate(cfg)
        if distributed:   # rank 0 evaluates alone; the others wait, so that all leave the group together (a rank
            torch.distributed.barrier()          # that tore it down while rank 0 was busy once died in gloo's teardown)
            torch.distributed.destroy_process_group()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: continue with python world_model.py --resume <run folder> (it restarts from the last "
              "checkpoint, written at every validation)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

