"""Neural-Atari Regen: a world model of Atari Pong you can train on a laptop in two minutes.

An autoencoder squeezes each 84x84 grey frame into a 128-D latent; a predictor maps the last K
latents and the player's action to the next latent; rolled out open loop it dreams the game.

    python world_model.py                                  # record frames, train both, write assets/
    python world_model.py ae.steps=1000 model.context=1    # dot-notation overrides of Config
    python world_model.py --config my.yaml optim.lr=3e-4   # a YAML file first, then overrides
    python world_model.py data.source=data/pong            # train on a recorded dataset (python -m data.d4rl_frames)
    python world_model.py --resume runs/<run>              # continue a stopped run where it stopped

    from world_model import WorldModel
    wm = WorldModel.load("runs/<run>/checkpoints/last.pt")
    wm.rollout(context, actions)                           # uint8 (K, 84, 84), int (H,) -> uint8 (H, 84, 84)
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import shutil
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm.auto import tqdm

from data.d4rl_frames import FrameData, make_env, record
from data.probe import compare_probes, object_agreement, probe, record_labelled, validate_probe

CHECKPOINT_FORMAT = 2

# ------------------------------------------------------------------------------------ config


@dataclass
class DataConfig:
    source: str = "ale"           # ale: record now with Gymnasium + ale-py | a dataset folder (ours or the predecessor's) | d4rl:<id>
    game: str = "Pong"            # ALE game name, as in ALE/<game>-v5
    train_steps: int = 5000       # ale source: frames recorded for training
    val_steps: int = 1000         # ale source: held-out frames, from separate episodes (val_seed)
    seed: int = 0                 # ale source: seed of the training recording (emulator no-ops and policy)
    val_seed: int = 1             # ale source: seed of the held-out recording; must differ from seed
    policy: str = "random"        # ale source: policy that plays while recording
    val_fraction: float = 0.1     # dataset sources: share of whole episodes (the last ones) held out
    num_workers: int = 0          # DataLoader processes gathering autoencoder batches (0: in the main process)
    prefetch_factor: Optional[int] = None  # batches each worker loads ahead; only with num_workers > 0
    persistent_workers: bool = False  # keep workers alive between phases; only with num_workers > 0
    pin_memory: bool = False      # page-locked batches for faster host-to-GPU copies; only on CUDA


@dataclass
class ModelConfig:
    latent_dim: int = 128         # size of a frame's latent
    width: int = 48               # channels of the autoencoder's 21x21 and 11x11 feature maps (multiple of 8)
    context: int = 4              # K: latents the predictor sees (1 allowed)
    action_conditioned: bool = True  # False: pure dynamics, the action is not an input
    hidden: int = 512             # predictor MLP width


@dataclass
class AEConfig:
    steps: int = 750              # optimizer steps of the autoencoder loop
    batch_size: int = 96          # frames per step (the recipe was chosen over 3 training seeds: README)
    lr: float = 3e-3              # peak learning rate (optim.lr, when set, replaces it)
    schedule: str = "one_cycle"   # learning-rate schedule: one_cycle | cosine | constant
    loss: str = "mse"             # per-pixel error: mse | huber (the object weights apply to either)
    huber_delta: float = 0.1      # huber: quadratic below this error (pixels on a 0..1 scale)
    fg_weight: float = 100.0      # extra loss weight on pixels that differ from the background
    bright_weight: float = 300.0  # extra weight on bright foreground pixels (Pong's ball)
    fg_threshold: float = 0.05    # |pixel - background| above this is foreground (0..1 scale)
    bright_threshold: float = 0.6  # pixels above this are 'bright' (the ball peaks at 0.8-0.93)
    peak_weight: float = 100.0    # weight of the max-pooled (3x3) MSE on bright pixels: keeps the ball sharp
    margin_weight: float = 1000.0  # weight of the brightness-margin hinge: only the ball may look like the ball
    margin: float = 0.04          # non-ball pixels stay below bright_threshold - margin, ball pixels above it + margin
    returned_ball_weight: float = 3.0  # Pong: frames whose ball moves toward the opponent weigh 1 + this in batches
    grad_clip: float = 1.0        # max gradient norm (the weights jump when a ghost object appears)


@dataclass
class PredConfig:
    steps: int = 500              # optimizer steps of the predictor loop
    batch_size: int = 64          # windows per step (64 dreamed as well as 128 on dev play, in half the time)
    lr: float = 1e-3              # peak learning rate (optim.lr, when set, replaces it)
    schedule: str = "one_cycle"   # learning-rate schedule: one_cycle | cosine | constant
    loss: str = "mse"             # latent error: mse | huber
    huber_delta: float = 1.0      # huber: quadratic below this error (latents are normalised to unit std)
    unroll: int = 4               # open-loop steps per training window (1 = teacher forcing)
    grad_clip: float = 1.0        # max gradient norm
    unknown_past_prob: float = 0.25  # share of windows trained without the actions before the last context frame


@dataclass
class OptimConfig:
    lr: Optional[float] = None    # if set, the peak learning rate of both phases (replaces ae.lr and pred.lr)
    beta1: float = 0.9            # AdamW first-moment decay (one_cycle cycles it between 0.85 and 0.95)
    beta2: float = 0.99           # AdamW second-moment decay: short memory, the object weights make gradients spiky
    weight_decay: float = 0.0     # AdamW decoupled weight decay
    warmup: float = 0.1           # share of a phase spent warming up (one_cycle and cosine)


@dataclass
class EvalConfig:
    val_every: int = 100          # validate (held-out losses, figures, images, videos, checkpoints) every this many steps
    log_every: int = 10           # a metrics.csv row every this many steps
    val_frames: int = 256         # held-out frames scored at each autoencoder validation
    video_frames: int = 60        # length of the open-loop video written at each predictor validation
    rollout_frames: int = 200     # length of the final dreamed GIF (assets/pong_fake.gif)
    fps: int = 15                 # GIF frame rate (Pong runs at 15 agent steps a second)


@dataclass
class TrainConfig:
    seed: int = 0                 # seeds initialisation and every batch (batch t is drawn from (seed, phase, t))
    device: str = "auto"          # auto (CUDA, then Apple MPS, then CPU) | cpu | cuda | mps
    cpu: bool = False             # force the CPU whatever device says
    precision: str = "fp32"       # fp32 | bf16 | fp16 (autocast; CUDA only)
    compile: bool = False         # torch.compile the training modules (CUDA only; checkpoints hold the plain module)


@dataclass
class WandbConfig:
    mode: str = "disabled"        # disabled | offline | online (needs `pip install wandb`)
    project: str = "neural-atari-regen"  # W&B project
    entity: Optional[str] = None  # W&B team or user (None: your default)


@dataclass
class ExperimentConfig:
    name: str = ""                # run folder suffix (runs/<timestamp>_<name>); empty: the game's name
    out_dir: str = "runs"         # run folders go here
    assets_dir: str = "assets"    # real_vs_recon.png and pong_fake.gif go here
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class HeldoutConfig:
    """`python world_model.py eval`: held-out episodes, rollouts and pictures (heldout.<field>=value)."""
    steps: int = 3000             # held-out frames recorded when no dataset is given (episodes no run trained on)
    seed: int = 1234              # seed of that recording: never a training seed (checked)
    policy: str = "tracker"       # recording policy: another than training's random play (tracker returns the ball)
    horizon: int = 50             # H: open-loop steps of the curves and the CSV
    starts: int = 96              # open-loop rollouts, start points spread evenly over all episodes
    long_horizon: int = 200       # steps of the long rollouts (tracking horizon, videos)
    long_starts: int = 8          # long rollouts (0: none)
    dream_steps: int = 200        # steps of each dream with random actions (no ground truth)
    dreams: int = 8               # dreams, from different real contexts
    videos: int = 3               # long rollouts written as GIF (and MP4 when imageio-ffmpeg is installed)
    video_steps: int = 100        # steps shown per video (a noisy 200-step GIF at x3 is ~8 MB)
    probe_frames: int = 1500      # RAM-labelled frames to check the probe on (Pong only; 0: skip)
    batch_frames: int = 3200      # predicted frames held at once (x 28 KB as float): starts per batch = this // horizon
    fps: int = 15                 # video frame rate (Pong runs at 15 agent steps a second)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ae: AEConfig = field(default_factory=AEConfig)
    pred: PredConfig = field(default_factory=PredConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)

    def lr(self, phase: str) -> float:
        """The peak learning rate of a phase: optim.lr when set, else ae.lr / pred.lr."""
        return self.optim.lr if self.optim.lr is not None else getattr(self, phase).lr

    def check(self) -> "Config":
        """Inconsistent combinations are errors before anything runs."""
        d, t = self.data, self.train
        if d.source == "ale" and d.val_seed == d.seed:
            raise ValueError("data.val_seed must differ from data.seed: held-out episodes are never training episodes")
        for name, v in [("model.context", self.model.context), ("ae.steps", self.ae.steps), ("pred.steps", self.pred.steps),
                        ("pred.unroll", self.pred.unroll), ("data.train_steps", d.train_steps),
                        ("data.val_steps", d.val_steps), ("ae.batch_size", self.ae.batch_size),
                        ("pred.batch_size", self.pred.batch_size), ("eval.val_every", self.eval.val_every),
                        ("eval.log_every", self.eval.log_every), ("eval.val_frames", self.eval.val_frames),
                        ("eval.fps", self.eval.fps), *((f"heldout.{k}", getattr(self.heldout, k)) for k in
                        ("steps", "horizon", "starts", "long_horizon", "dream_steps", "dreams", "fps", "batch_frames"))]:
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        for k in ("fg_weight", "bright_weight", "peak_weight", "margin_weight", "margin", "returned_ball_weight"):
            if getattr(self.ae, k) < 0:
                raise ValueError(f"ae.{k} must be >= 0, got {getattr(self.ae, k)}")
        if self.model.width % 8:
            raise ValueError(f"model.width must be a multiple of 8 (GroupNorm uses 8 groups), got {self.model.width}")
        for name, v, allowed in [("ae.schedule", self.ae.schedule, SCHEDULES), ("pred.schedule", self.pred.schedule, SCHEDULES),
                                 ("ae.loss", self.ae.loss, LOSSES), ("pred.loss", self.pred.loss, LOSSES),
                                 ("train.precision", t.precision, ("fp32", "bf16", "fp16")),
                                 ("train.device", t.device, ("auto", "cpu", "cuda", "mps")),
                                 ("experiment.wandb.mode", self.experiment.wandb.mode, ("disabled", "offline", "online"))]:
            if v not in allowed:
                raise ValueError(f"{name}={v!r} is not one of {', '.join(allowed)}")
        if not 0 < d.val_fraction < 1:
            raise ValueError(f"data.val_fraction must lie in (0, 1), got {d.val_fraction}")
        if d.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {d.num_workers}")
        if d.num_workers == 0 and (d.prefetch_factor is not None or d.persistent_workers):
            raise ValueError("data.prefetch_factor and data.persistent_workers need data.num_workers > 0 "
                             "(with no workers nothing loads ahead): set data.num_workers or drop them")
        if d.source == "ale" and d.val_steps < self.model.context + self.eval.rollout_frames:
            need = self.model.context + self.eval.rollout_frames
            raise ValueError(f"data.val_steps={d.val_steps} is too short for a {self.eval.rollout_frames}-frame rollout "
                             f"after {self.model.context} context frames: use >= {need}")
        dev = train_device(self)
        if not t.cpu and t.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("train.device=cuda but torch sees no CUDA device: use train.device=auto or cpu")
        if dev.type != "cuda":
            for name, bad in [("train.precision", t.precision != "fp32"), ("train.compile", t.compile),
                              ("data.pin_memory", d.pin_memory)]:
                if bad:
                    raise ValueError(f"{name} needs CUDA, but training runs on {dev.type}: drop it or run on a GPU")
        return self


METHODS = ("model", "copy_last", "zero_action")
SUMMARY_HORIZONS = (1, 5, 10, 25, 50, 100, 200)   # those <= the rollout's horizon go in metrics.json
BALL_MOVES_PX = 0.5       # a ball 'moves' when its centroid shifts this much between frames
# A paddle away from the walls shows 6-13 visible rows on real frames (6-7 at rest, up to 12 when
# the max-pooled frame holds two positions, 13 when the opponent jumps at a serve); fewer only
# when partly behind a wall. Measured on 4,500 recorded frames (seeds 7, 11, 13).
PADDLE_ROWS = (6, 13)
LOSSES = ("mse", "huber")
SCHEDULES = ("one_cycle", "cosine", "constant")

# A few seconds end to end: the tests and the notebook's WM_SMOKE=1 mode use it.
SMALL_BUDGET = ("data.train_steps=400", "data.val_steps=300", "ae.steps=40", "pred.steps=40", "model.width=16",
                "model.hidden=64", "eval.rollout_frames=20", "eval.video_frames=20", "eval.val_every=20",
                "eval.log_every=10", "heldout.steps=600", "heldout.horizon=20", "heldout.starts=16", "heldout.long_horizon=40",
                "heldout.long_starts=2", "heldout.dream_steps=40", "heldout.dreams=2", "heldout.videos=1",
                "heldout.video_steps=40", "heldout.probe_frames=200")


def make_config(overrides: list[str] | None = None, yaml_path: str | None = None, base: Config | None = None) -> Config:
    """Config from defaults (or `base`), then a YAML file, then `a.b=value` overrides; typos and wrong types raise."""
    try:
        cfg = OmegaConf.structured(base or Config())
        if yaml_path:
            if not Path(yaml_path).is_file():
                raise ValueError(f"config file {yaml_path} not found")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(yaml_path))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ValueError(f"override {bad[0]!r} is not of the form key=value (e.g. ae.steps=1000)")
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        return OmegaConf.to_object(cfg).check()
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        where = f" at {key}" if key else ""
        raise ValueError(f"bad config{where}: {str(e).splitlines()[0]} (the fields and types are in Config, "
                         f"world_model.py)") from None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def train_device(cfg: Config) -> torch.device:
    return pick_device("cpu" if cfg.train.cpu else cfg.train.device)

# ------------------------------------------------------------------------------------ models


class Autoencoder(nn.Module):
    """84x84 uint8 frame -> latent -> frame, drawn as a residual over the static background.

    Pixel-unshuffle turns the frame into a 21x21x16 map losslessly, so the ball's exact pixel
    survives the stem at a fraction of the cost of strided convolutions on the full frame.
    """

    def __init__(self, latent_dim: int = 128, width: int = 48):
        super().__init__()
        self.width = width
        self.register_buffer("background", torch.zeros(84, 84))  # per-pixel median of training frames, 0..1
        def norm():  # GroupNorm: measurably faster learning in a 500-step budget, batch-size independent
            return nn.GroupNorm(8, width)
        self.encoder = nn.Sequential(
            nn.PixelUnshuffle(4),                                              # (B, 16, 21, 21)
            nn.Conv2d(16, width, 3, 1, 1), norm(), nn.GELU(),                  # (B, W, 21, 21)
            nn.Conv2d(width, width, 3, 2, 1), norm(), nn.GELU(),               # (B, W, 11, 11)
            nn.Flatten(), nn.Linear(width * 121, latent_dim))                  # (B, D)
        self.fc = nn.Linear(latent_dim, width * 121)
        self.decoder = nn.Sequential(
            norm(), nn.GELU(), nn.ConvTranspose2d(width, width, 3, 2, 1),      # (B, W, 21, 21)
            norm(), nn.GELU(), nn.Conv2d(width, 16, 3, 1, 1), nn.PixelShuffle(4))  # (B, 1, 84, 84)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.float().div(255).unsqueeze(1) - self.background  # uint8 (B, 84, 84) -> (B, 1, 84, 84)
        return self.encoder(x)                                       # (B, D)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.width, 11, 11)                  # (B, W, 11, 11)
        return self.decoder(h).squeeze(1) + self.background          # (B, 84, 84), 0..1 (unclamped)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(frames))


class Predictor(nn.Module):
    """Next latent from the last K latents and the actions taken at each of them.

    Past actions matter: in Pong the paddle's move into frame t+1 follows the action at t-1 more
    than the one at t (measured correlation 0.67 vs 0.54). An unknown action (-1: before a dream
    starts, the API is given only the action at the last context frame) is a zero vector.
    """

    def __init__(self, latent_dim: int, context: int, num_actions: int, hidden: int, action_conditioned: bool):
        super().__init__()
        self.context, self.num_actions, self.action_conditioned = context, num_actions, action_conditioned
        self.register_buffer("mean", torch.zeros(latent_dim))  # latent statistics of the training frames
        self.register_buffer("std", torch.ones(latent_dim))
        n_in = latent_dim * context + (num_actions * context if action_conditioned else 0)
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, latent_dim))

    def forward(self, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """z (B, K, D) normalised latents, actions (B, K) int (-1 unknown) -> (B, D) normalised next latent."""
        x = z.flatten(1)                                                     # (B, K*D)
        if self.action_conditioned:
            a = F.one_hot(actions.long() + 1, self.num_actions + 1)[..., 1:]  # (B, K, A); -1 -> zeros
            x = torch.cat([x, a.flatten(1).float()], 1)                       # (B, K*D + K*A)
        return z[:, -1] + self.net(x)  # predict the change: most of a Pong frame stays put

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) / self.std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean


def _check_frames(x, name: str, n: int | None = None) -> torch.Tensor:
    """uint8 (N, 84, 84) numpy or tensor -> tensor; anything else is a ValueError."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 3 or tuple(x.shape[1:]) != (84, 84):
        got = f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}"
        raise ValueError(f"{name} must be uint8 of shape (N, 84, 84), got {got}")
    if n is not None and len(x) != n:
        raise ValueError(f"{name} must hold exactly {n} frames (the model's context), got {len(x)}")
    return x


def pixel_mse(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> float:
    """Mean squared error of two uint8 frame stacks on the 0..1 scale, in chunks (float copies of a
    30,000-frame held-out split would take 850 MB each)."""
    total = sum(float(((a[i:i + chunk].astype(np.float32) - b[i:i + chunk]) ** 2).sum()) for i in range(0, len(a), chunk))
    return total / max(a.size, 1) / 255 ** 2


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


class WorldModel(nn.Module):
    """Autoencoder + predictor + the config that built them; the object users load and roll out."""

    def __init__(self, cfg: Config, num_actions: int, game: str = "Pong"):
        super().__init__()
        self.cfg, self.num_actions, self.game = cfg, num_actions, game
        m = cfg.model
        self.ae = Autoencoder(m.latent_dim, m.width)
        self.predictor = Predictor(m.latent_dim, m.context, num_actions, m.hidden, m.action_conditioned)

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
            out[i:i + batch_size] = _to_uint8(self.ae(x[i:i + batch_size].to(self.device)))
        return out

    def _check_actions(self, actions, name: str, n: int | None = None) -> torch.Tensor:
        a = torch.as_tensor(np.asarray(actions))
        if a.dim() != 1 or a.dtype in (torch.float16, torch.float32, torch.float64, torch.bool):
            raise ValueError(f"{name} must be a 1-D integer array, got {a.dtype} {tuple(a.shape)}")
        if n is not None and len(a) != n:
            raise ValueError(f"{name} must hold {n} actions (those taken at context[:-1]), got {len(a)}")
        if len(a) and (a.min() < 0 or a.max() >= self.num_actions):
            raise ValueError(f"{name} must lie in [0, {self.num_actions}) for {self.game}, got [{a.min()}, {a.max()}]")
        return a.long()

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
        return _to_uint8(self.rollout_batch(ctx[None], a[None], past)[0])

    @torch.no_grad()
    def rollout_batch(self, context: torch.Tensor, actions: torch.Tensor,
                      context_actions: torch.Tensor | None = None) -> torch.Tensor:
        """Many dreams: uint8 (B, K, 84, 84), int (B, H), optional int (B, K - 1) -> float (B, H, 84, 84) in 0..1."""
        self.eval()
        B, K = context.shape[:2]
        dev = self.device
        if context_actions is None:
            context_actions = torch.full((B, K - 1), -1, dtype=torch.long)    # unknown
        history = torch.cat([context_actions.long(), actions.long()], 1).to(dev)  # (B, K - 1 + H)
        z = self.encode_context(context)                                      # (B, K, D)
        out = []
        for i in range(actions.shape[1]):
            z, frame = self.dream_step(z, history[:, i:i + K])
            out.append(frame)                                                  # (B, 84, 84)
        return torch.stack(out, 1) if out else torch.zeros(B, 0, 84, 84)

    def encode_context(self, context: torch.Tensor) -> torch.Tensor:
        """uint8 (B, K, 84, 84) -> the predictor's normalised latent window (B, K, D)."""
        B, K = context.shape[:2]
        return self.predictor.normalize(self.ae.encode(context.flatten(0, 1).to(self.device)).view(B, K, -1))

    def dream_step(self, z: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One open-loop step: window (B, K, D) and the actions at its K frames (B, K) -> the window
        slid by the predicted latent, and the decoded frame float (B, 84, 84) in 0..1 (unclamped)."""
        p = self.predictor
        nxt = p(z, actions)                                                    # (B, D) normalised
        return torch.cat([z[:, 1:], nxt[:, None]], 1), self.ae.decode(p.denormalize(nxt))

    def save(self, path: str | Path, **extra) -> None:
        """Self-describing checkpoint, written to a temporary file and renamed (never half-written)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ckpt = dict(format=CHECKPOINT_FORMAT, config=asdict(self.cfg), num_actions=self.num_actions, game=self.game,
                    model=self.state_dict(), versions=dict(torch=str(torch.__version__), numpy=str(np.__version__),
                                                            python=platform.python_version()), **extra)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, path)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, where: str = "checkpoint") -> "WorldModel":
        wm = cls(checkpoint_config(ckpt), ckpt["num_actions"], ckpt["game"])
        try:
            wm.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])[:300]
            raise ValueError(f"{where} does not match the model its config builds: {detail}") from None
        return wm

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "WorldModel":
        """Rebuild a model from a checkpoint alone (CPU unless told otherwise)."""
        return cls.from_checkpoint(read_checkpoint(path), f"checkpoint {path}").to(pick_device(device)).eval()


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's dict, loaded with weights_only=True; a missing, truncated or foreign file is a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: train one with `python world_model.py`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint {path} is unreadable ({type(e).__name__}): is it a truncated or foreign file?") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else None
        raise ValueError(f"checkpoint {path} is not a Neural-Atari Regen checkpoint of format {CHECKPOINT_FORMAT} "
                         f"(found format {got}): retrain with this version")
    try:
        checkpoint_config(ckpt)
    except (ValueError, KeyError) as e:
        raise ValueError(f"checkpoint {path} holds a config this version cannot read ({e})") from None
    return ckpt


def checkpoint_config(ckpt: dict) -> Config:
    """The Config a checkpoint was written with, checked like any other."""
    return make_config(base=OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), ckpt["config"])))

# ------------------------------------------------------------------------------------ batching


def step_rng(cfg: Config, phase: str, step: int) -> np.random.Generator:
    """The random stream of one training step: drawn from (seed, phase, step) alone, so a resumed
    run (or a DataLoader worker) draws exactly the batch an uninterrupted run would have drawn."""
    return np.random.default_rng([cfg.train.seed, PHASES.index(phase), step])


class FrameBatches(torch.utils.data.Dataset):
    """Autoencoder batches by step number: item t is the uint8 (B, 84, 84) batch of step t.

    Frames stay uint8 (and on disk, for recorded datasets) until the model's first line;
    sorted indices make a gather from disk read the files in order. Pong frames whose ball moves
    toward the opponent (a returned ball: 6-15 % of random play, failing 5-14x as often as other
    frames) are drawn 1 + ae.returned_ball_weight times as often as the rest.
    """

    def __init__(self, cfg: Config, data: FrameData):
        self.cfg, self.data = cfg, data
        self.p = None                                          # sampling probabilities (None: uniform)
        if cfg.ae.returned_ball_weight > 0 and data.game == "Pong":
            w = 1 + cfg.ae.returned_ball_weight * returned_ball(data)
            self.p = w / w.sum()

    def __len__(self) -> int:
        return self.cfg.ae.steps + 1

    def indices(self, step: int) -> np.ndarray:
        """The sorted frame indices of step `step`'s batch."""
        rng, n, b = step_rng(self.cfg, "ae", step), len(self.data), self.cfg.ae.batch_size
        return np.sort(rng.integers(n, size=b) if self.p is None else rng.choice(n, size=b, p=self.p))

    def __getitem__(self, step: int) -> torch.Tensor:
        idx = self.indices(step)
        return torch.from_numpy(np.ascontiguousarray(self.data.frames[idx]))   # (B, 84, 84) uint8


def returned_ball(data: FrameData) -> np.ndarray:
    """Pong: bool (N,), the frame's ball moved toward the opponent (left, >= 0.5 px) since the
    previous frame of its episode. Found by the probe, so any Pong source works (read in chunks)."""
    pr = probe(data.frames)
    same = np.r_[False, data.episode[1:] == data.episode[:-1]]
    return pr["ball"] & np.r_[False, pr["ball"][:-1]] & same & (np.r_[0.0, np.diff(pr["ball_x"])] < -BALL_MOVES_PX)


def frame_loader(cfg: Config, data: FrameData, first_step: int) -> torch.utils.data.DataLoader:
    d = cfg.data
    extra = dict(prefetch_factor=d.prefetch_factor, persistent_workers=d.persistent_workers) if d.num_workers else {}
    return torch.utils.data.DataLoader(FrameBatches(cfg, data), batch_size=None, sampler=range(first_step, cfg.ae.steps + 1),
                                       num_workers=d.num_workers, pin_memory=d.pin_memory, **extra)


def window_batch(starts: np.ndarray, length: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Index windows of `length` consecutive frames inside one episode: int (B, length)."""
    pick = starts[rng.integers(len(starts), size=batch_size)]
    return pick[:, None] + np.arange(length)[None]

# ------------------------------------------------------------------------------------ training loops


PHASES = ("ae", "pred")


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
            return (i + 1) / warm if i < warm else 0.5 * (1 + np.cos(np.pi * (i - warm) / max(1, steps - warm)))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return opt, sched


def point_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    """Elementwise error, not reduced: squared or Huber."""
    if kind == "huber":
        return F.huber_loss(pred, target, reduction="none", delta=delta)
    return (pred - target) ** 2


class Precision:
    """Autocast (and, for fp16, loss scaling) on CUDA; a no-op in fp32."""

    def __init__(self, cfg: Config, dev: torch.device):
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision)
        self.dev = dev
        self.scaler = torch.amp.GradScaler("cuda") if cfg.train.precision == "fp16" else None

    def autocast(self):
        return torch.autocast(self.dev.type, dtype=self.dtype, enabled=self.dtype is not None)

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, sched, grad_clip: float) -> float:
        """One optimizer step; returns the gradient norm before clipping."""
        opt.zero_grad(set_to_none=True)
        params = [p for g in opt.param_groups for p in g["params"]]
        if self.scaler is None:
            loss.backward()
            norm = nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(opt)
            norm = nn.utils.clip_grad_norm_(params, grad_clip)
            self.scaler.step(opt)
            self.scaler.update()
        sched.step()
        return norm


@torch.no_grad()
def max_pool3(x: torch.Tensor) -> torch.Tensor:
    """3x3 max filter of (B, 1, H, W) as shifted maxima: ~20x faster than max_pool2d's CPU kernel (no indices)."""
    p = F.pad(x, (1, 1, 1, 1), value=-1.0)
    h = torch.maximum(torch.maximum(p[..., :, :-2], p[..., :, 1:-1]), p[..., :, 2:])
    return torch.maximum(torch.maximum(h[..., :-2, :], h[..., 1:-1, :]), h[..., 2:, :])


def ae_loss(ae: nn.Module, frames: torch.Tensor, c: AEConfig, background: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, dict]:
    """Object-weighted error: plain MSE on a grey Pong screen ignores the 2-pixel ball.

    Pixels where the target or the reconstruction leaves the background weigh 1 + fg_weight, and
    bright ones (the ball) bright_weight more: missing an object and drawing a ghost both cost.
    `ae` may be a compiled module; `background` is then the plain module's buffer.
    """
    target = frames.float() / 255                                            # (B, 84, 84)
    recon = ae(frames).float()
    r, bg = recon.detach(), (ae.background if background is None else background)
    fg = ((target - bg).abs() > c.fg_threshold) | ((r - bg).abs() > c.fg_threshold)
    bright = fg & ((target > c.bright_threshold) | (r > c.bright_threshold))
    w = 1 + c.fg_weight * fg.float() + c.bright_weight * bright.float()
    loss = (w * point_loss(recon, target, c.loss, c.huber_delta)).mean()
    if c.peak_weight > 0:
        # Max-pooled 3x3 images must match too: a ball placed 1 px off costs little here, a ball
        # smeared dim over its possible positions (the MSE-optimal hedge) costs a lot.
        pr, pt = F.max_pool2d(recon[:, None], 3, 1, 1), max_pool3(target[:, None])
        pb = ((pt > c.bright_threshold) | (pr.detach() > c.bright_threshold)).float()
        loss = loss + c.peak_weight * (pb * (pr - pt) ** 2).mean()
    if c.margin_weight > 0:
        # The ball is the only thing this bright, and the probe (like a viewer) tells it by brightness:
        # a paddle drawn 6 grey levels too bright became a 'ball' in every ghost we counted, and most
        # missed balls were drawn just too dim. Squared hinges keep both classes clear of the threshold.
        ball = target > c.bright_threshold
        over = F.relu(recon - (c.bright_threshold - c.margin))
        under = F.relu(target.clamp(max=c.bright_threshold + c.margin) - recon)
        loss = loss + c.margin_weight * torch.where(ball, under, over).pow(2).mean()
    return loss, {"mse": F.mse_loss(recon.detach(), target), "recon": r}


def _background(frames: np.ndarray, n: int = 4096) -> np.ndarray:
    """Per-pixel median of up to n evenly spaced frames (a dataset on disk is never read whole)."""
    idx = np.unique(np.linspace(0, len(frames) - 1, min(n, len(frames))).astype(np.int64))
    return np.median(frames[idx], axis=0).astype(np.float32) / 255                   # (84, 84)


def train_autoencoder(cfg: Config, train: FrameData, val: FrameData, num_actions: int | None = None,
                      progress: bool = True, run: "Run | None" = None, resume: dict | None = None
                      ) -> tuple[WorldModel, list[dict]]:
    """Loop 1: fit the autoencoder on single frames. Returns a WorldModel (predictor untrained) and the
    validation history. `run` writes metrics, pictures and checkpoints; `resume` is a checkpoint dict."""
    torch.manual_seed(cfg.train.seed)
    dev = train_device(cfg)
    wm = WorldModel(cfg, num_actions or train.num_actions, train.game).to(dev)
    ae = wm.ae
    ae.background.copy_(torch.from_numpy(_background(train.frames)))
    opt, sched = make_optimizer(cfg, "ae", ae.parameters())
    prec, net = Precision(cfg, dev), (torch.compile(ae) if cfg.train.compile else ae)
    first, best = 1, float("inf")
    if resume is not None:
        first, best = _restore(resume, "ae", wm, opt, sched) + 1, resume["best"]
    val_x = torch.from_numpy(val.frames[np.linspace(0, len(val) - 1, min(cfg.eval.val_frames, len(val))).astype(int)])
    history = []

    def validate(step: int) -> float:
        ae.eval()
        with torch.no_grad():
            vloss, m = ae_loss(ae, val_x.to(dev), cfg.ae)
        recon = _to_uint8(m["recon"])                                        # what wm.reconstruct(val_x) returns
        ok = object_agreement(val_x.numpy(), recon)
        row = {"phase": "ae", "step": step, "val_loss": vloss.item(),
               "recon_mse": pixel_mse(recon, val_x.numpy()),
               **{f"recon_{k}": float(v.mean()) for k, v in ok.items()}}
        history.append(row)
        if run is not None:
            run.log_val(row)
            pick = np.linspace(0, len(val_x) - 1, 8).astype(int)
            run.image(f"ae_step{step:06d}.png", strip(val_x.numpy()[pick], recon[pick]))
        return row["val_loss"]

    if first == 1:
        best = validate(0)
    bar = tqdm(frame_loader(cfg, train, first), desc="autoencoder", disable=not progress, mininterval=1.0,
               initial=first - 1, total=cfg.ae.steps)
    meter = Meter()
    for step, x in enumerate(bar, first):
        ae.train()
        with prec.autocast():
            loss, m = ae_loss(net, x.to(dev, non_blocking=True), cfg.ae, ae.background)
        prec.step(loss, opt, sched, cfg.ae.grad_clip)
        meter.add(len(x), loss=loss.detach(), mse=m["mse"])
        best = end_of_step(cfg, "ae", step, meter, sched, bar, run, validate, wm, opt, best)
    return wm.eval(), history


@torch.no_grad()
def encode_all(wm: WorldModel, frames: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """uint8 (N, 84, 84) -> latents (N, D) with the frozen encoder (reads frames on disk in chunks)."""
    wm.eval()
    # Written into one preallocated tensor: a list of small long-lived results interleaved with the big
    # per-batch temporaries fragments the heap, and RSS grew by ~14 MB a batch (8.6 GB for 270k frames).
    out = torch.empty(len(frames), wm.ae.fc.in_features, device=wm.device)              # (N, D)
    for i in tqdm(range(0, len(frames), batch_size), desc="encoding", disable=len(frames) < 50_000, leave=False):
        out[i:i + batch_size] = wm.ae.encode(torch.from_numpy(np.ascontiguousarray(frames[i:i + batch_size])).to(wm.device))
    return out


def pred_loss(p: nn.Module, z: torch.Tensor, actions: torch.Tensor, unroll: int, kind: str = "mse",
              delta: float = 1.0) -> torch.Tensor:
    """Open-loop latent error over `unroll` steps. z (B, K + U, D) normalised, actions (B, K + U) int."""
    K = p.context
    window, loss = z[:, :K], 0.0
    for u in range(unroll):
        nxt = p(window, actions[:, u:u + K]).float()                        # (B, D)
        loss = loss + point_loss(nxt, z[:, K + u], kind, delta).mean()
        window = torch.cat([window[:, 1:], nxt[:, None]], 1)                 # feed the prediction back
    return loss / unroll


def train_predictor(cfg: Config, wm: WorldModel, train: FrameData, val: FrameData, progress: bool = True,
                    run: "Run | None" = None, resume: dict | None = None) -> tuple[WorldModel, list[dict]]:
    """Loop 2: fit the predictor on latents of the frozen encoder, on windows that never cross an episode end."""
    torch.manual_seed(cfg.train.seed + 1)
    p, dev, K, U = wm.predictor, wm.device, cfg.model.context, cfg.pred.unroll
    for prm in wm.ae.parameters():
        prm.requires_grad_(False)
    z_train, z_val = encode_all(wm, train.frames), encode_all(wm, val.frames)  # (N, D)
    p.mean.copy_(z_train.mean(0))
    p.std.copy_(z_train.std(0) + 1e-6)
    z_train, z_val = p.normalize(z_train), p.normalize(z_val)
    a_train, a_val = torch.from_numpy(np.asarray(train.actions)).to(dev), torch.from_numpy(np.asarray(val.actions)).to(dev)
    starts, vstarts = train.starts(K + U), val.starts(K + U)
    if len(starts) == 0 or len(vstarts) == 0:
        raise ValueError(f"no {'training' if len(starts) == 0 else 'held-out'} episode holds {K + U} consecutive "
                         f"frames (model.context + pred.unroll): use longer episodes or lower them")
    vwin = torch.from_numpy(vstarts[np.linspace(0, len(vstarts) - 1, min(512, len(vstarts))).astype(int), None]
                            + np.arange(K + U)[None])                                  # (V, K + U)
    opt, sched = make_optimizer(cfg, "pred", p.parameters())
    prec, net = Precision(cfg, dev), (torch.compile(p) if cfg.train.compile else p)
    first, best = 1, float("inf")
    if resume is not None:
        first, best = _restore(resume, "pred", wm, opt, sched) + 1, resume["best"]
    vs = val.starts(K + 1)
    vone = vs[np.linspace(0, len(vs) - 1, 8).astype(int)]                               # one-step picture starts
    vvid = val.starts(K + cfg.eval.video_frames)[:1]                                    # the video's start, if any
    history = []

    def validate(step: int) -> float:
        p.eval()
        with torch.no_grad():
            v1 = pred_loss(p, z_val[vwin], a_val[vwin], 1, cfg.pred.loss, cfg.pred.huber_delta).item()
            vu = pred_loss(p, z_val[vwin], a_val[vwin], U, cfg.pred.loss, cfg.pred.huber_delta).item()
            w = torch.from_numpy(vone[:, None] + np.arange(K)[None])                 # (8, K)
            nxt = _to_uint8(wm.ae.decode(p.denormalize(p(z_val[w], a_val[w]))))      # teacher-forced next frames
        real = np.asarray(val.frames[vone + K])
        ok = object_agreement(real, nxt)
        row = {"phase": "pred", "step": step, "val_loss": vu, "pred_1step": v1,
               "pred_1step_mse": pixel_mse(nxt, real),
               **{f"pred_{k}": float(v.mean()) for k, v in ok.items()}}
        history.append(row)
        if run is not None:
            run.log_val(row)
            run.image(f"pred_step{step:06d}.png", strip(real, nxt))
            if len(vvid):
                s, H = int(vvid[0]), cfg.eval.video_frames
                dream = wm.rollout(val.frames[s:s + K], val.actions[s + K - 1:s + K - 1 + H], val.actions[s:s + K - 1])
                run.video(f"pred_step{step:06d}", side_by_side(np.asarray(val.frames[s + K:s + K + H]), dream))
        return vu

    if first == 1:
        best = validate(0)
    rows = range(first, cfg.pred.steps + 1)
    bar = tqdm(rows, desc="predictor", disable=not progress, mininterval=1.0, initial=first - 1, total=cfg.pred.steps)
    meter = Meter()
    for step in bar:
        p.train()
        rng = step_rng(cfg, "pred", step)
        w = torch.from_numpy(window_batch(starts, K + U, cfg.pred.batch_size, rng))    # (B, K + U)
        a = a_train[w]
        # As at the start of a dream, some windows do not know the actions before their last context frame.
        unknown = torch.from_numpy(rng.random((len(a), 1)) < cfg.pred.unknown_past_prob).to(dev)
        a[:, :K - 1] = torch.where(unknown, -1, a[:, :K - 1])
        with prec.autocast():
            loss = pred_loss(net, z_train[w], a, U, cfg.pred.loss, cfg.pred.huber_delta)
        prec.step(loss, opt, sched, cfg.pred.grad_clip)
        meter.add(len(w), loss=loss.detach())
        best = end_of_step(cfg, "pred", step, meter, sched, bar, run, validate, wm, opt, best)
    return wm.eval(), history


def end_of_step(cfg: Config, phase: str, step: int, meter: "Meter", sched, bar, run: "Run | None", validate,
                wm: WorldModel, opt: torch.optim.Optimizer, best: float) -> float:
    """The end of a training step, the same in both loops: a metrics row every log_every steps, a
    validation (with checkpoints) every val_every steps and at the last; returns the best validation loss."""
    steps = getattr(cfg, phase).steps
    if step % cfg.eval.log_every == 0 or step == steps:
        row = meter.row(phase, step, sched)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        if run is not None:
            run.log(row)
    if step % cfg.eval.val_every == 0 or step == steps:
        vloss = validate(step)
        if run is not None:
            best = run.checkpoint(wm, phase, step, opt, sched, vloss, best)
        meter.t0 = time.perf_counter()  # throughput counts training, not validation
    _die_at(phase, step)
    return best


class Meter:
    """Averages of the training losses since the last log row, and the throughput (one .item() per row)."""

    def __init__(self):
        self.sums, self.n, self.samples, self.t0 = {}, 0, 0, time.perf_counter()

    def add(self, samples: int, **values: torch.Tensor) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n, self.samples = self.n + 1, self.samples + samples

    def row(self, phase: str, step: int, sched) -> dict:
        dt = time.perf_counter() - self.t0
        row = {"phase": phase, "step": step, **{k: float(v) / self.n for k, v in self.sums.items()},
               "lr": sched.get_last_lr()[0], "samples_per_s": self.samples / max(dt, 1e-9)}
        self.__init__()
        return row


def _restore(ckpt: dict, phase: str, wm: WorldModel, opt, sched) -> int:
    """Load model, optimizer, scheduler and RNG states from a training checkpoint; returns its step."""
    wm.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    return int(ckpt["step"])


def _die_at(phase: str, step: int) -> None:
    """Crash-test hook: WM_DIE_AT=ae:30 kills the process (SIGKILL, no clean-up) after that step."""
    if os.environ.get("WM_DIE_AT") == f"{phase}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)

# ------------------------------------------------------------------------------------ run folder


class Run:
    """One run folder, laid out the same every time (drawn in the README):

    runs/<timestamp>_<name>/  resolved_config.yaml  metrics.csv  val_metrics.csv  summary.json
                              images/  videos/  checkpoints/{last,best}.pt
    """

    TRAIN_COLUMNS = ("phase", "step", "loss", "mse", "lr", "samples_per_s")
    VAL_COLUMNS = ("phase", "step", "val_loss", "recon_mse", "recon_ball", "recon_player", "recon_opponent",
                   "pred_1step", "pred_1step_mse", "pred_ball", "pred_player", "pred_opponent")

    def __init__(self, cfg: Config, path: Path):
        self.cfg, self.path = cfg, Path(path)
        for sub in ("checkpoints", "images", "videos"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        self.wandb = _start_wandb(cfg, self.path)

    @classmethod
    def create(cls, cfg: Config) -> "Run":
        """A new folder runs/<timestamp>_<name>/ holding the resolved config; never reuses a folder."""
        name = cfg.experiment.name or cfg.data.game.lower()
        path = Path(cfg.experiment.out_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}_{name}"
        while path.exists():
            path = path.with_name(path.name + "_")
        path.mkdir(parents=True)
        OmegaConf.save(OmegaConf.structured(cfg), path / "resolved_config.yaml")
        return cls(cfg, path)

    @classmethod
    def reopen(cls, path: str | Path) -> tuple["Run", dict]:
        """An existing run and its last checkpoint; metric rows written after that checkpoint are dropped
        (the resumed run writes them again)."""
        path = Path(path)
        if not (path / "resolved_config.yaml").is_file():
            raise FileNotFoundError(f"{path} is not a run folder (no resolved_config.yaml): give runs/<timestamp>_<game>")
        cfg = make_config(yaml_path=str(path / "resolved_config.yaml"))
        ckpt = read_checkpoint(path / "checkpoints" / "last.pt")
        if "optimizer" not in ckpt:
            raise ValueError(f"{path}/checkpoints/last.pt holds no training state: it cannot be resumed")
        mismatch = _config_diff(asdict(cfg), ckpt["config"])
        if mismatch:
            raise ValueError(f"{path}/checkpoints/last.pt was written with another config ({mismatch}) than "
                             f"{path}/resolved_config.yaml: restore the file or start a new run")
        at = (PHASES.index(ckpt["phase"]), ckpt["step"])
        for name in ("metrics.csv", "val_metrics.csv"):
            f = path / name
            if f.is_file():
                with open(f, newline="") as fh:
                    rows = list(csv.DictReader(fh))
                keep = [r for r in rows if (PHASES.index(r["phase"]), int(r["step"])) <= at]
                cols = cls.TRAIN_COLUMNS if name == "metrics.csv" else cls.VAL_COLUMNS
                _write_csv_atomic(f, cols, keep)
        return cls(cfg, path), ckpt

    def _append(self, name: str, cols: tuple, row: dict) -> None:
        f = self.path / name
        new = not f.is_file()
        with open(f, "a", newline="") as fh:
            w = csv.DictWriter(fh, cols, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    def _global_step(self, row: dict) -> int:
        return row["step"] + (self.cfg.ae.steps if row["phase"] == "pred" else 0)

    def log(self, row: dict) -> None:
        self._append("metrics.csv", self.TRAIN_COLUMNS, row)
        self._wandb_log({f"{row['phase']}/train/{k}": v for k, v in row.items() if k not in ("phase", "step")}, row)

    def log_val(self, row: dict) -> None:
        self._append("val_metrics.csv", self.VAL_COLUMNS, row)
        self._wandb_log({f"{row['phase']}/val/{k}": v for k, v in row.items() if k not in ("phase", "step")}, row)

    def image(self, name: str, img: np.ndarray) -> None:
        import imageio.v3 as iio
        iio.imwrite(self.path / "images" / name, img)
        if self.wandb is not None:
            import wandb
            self._wandb_log({f"images/{name.split('_step')[0]}": wandb.Image(str(self.path / "images" / name))})

    def video(self, name: str, video: np.ndarray) -> None:
        """uint8 (T, H, W) -> videos/<name>.gif, and .mp4 when imageio-ffmpeg is installed."""
        gif = self.path / "videos" / f"{name}.gif"
        save_gif(video, gif, self.cfg.eval.fps)
        save_mp4(video, gif.with_suffix(".mp4"), self.cfg.eval.fps)
        if self.wandb is not None:
            import wandb
            self._wandb_log({f"videos/{name.split('_step')[0]}": wandb.Video(str(gif), format="gif")})

    def checkpoint(self, wm: WorldModel, phase: str, step: int, opt, sched, val_loss: float, best: float) -> float:
        """last.pt (with everything needed to resume) at every validation; best.pt when the phase's
        validation loss improves. Returns the best validation loss so far."""
        best = min(best, val_loss)
        state = dict(phase=phase, step=step, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                     rng={"torch": torch.get_rng_state()}, val_loss=val_loss, best=best)
        last = self.path / "checkpoints" / "last.pt"
        wm.save(last, **state)
        if val_loss <= best:  # the same bytes: copy, then rename (never a half-written best.pt)
            tmp = last.with_name("best.pt.tmp")
            shutil.copyfile(last, tmp)
            os.replace(tmp, last.with_name("best.pt"))
        return best

    def _wandb_log(self, values: dict, row: dict | None = None) -> None:
        if self.wandb is None:
            return
        try:
            self.wandb.log(values, **({"step": self._global_step(row)} if row else {}))
        except Exception as e:  # a tracker must never stop training
            print(f"W&B: logging failed ({type(e).__name__}: {e}); training goes on without it", file=sys.stderr)
            self.wandb = None

    def finish(self, summary: dict) -> None:
        (self.path / "summary.json").write_text(json.dumps(summary, indent=1))
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
            self.wandb.finish()


def _start_wandb(cfg: Config, path: Path):
    """A W&B run when experiment.wandb.mode asks for one; if it cannot start, say so once and go on."""
    w = cfg.experiment.wandb
    if w.mode == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        print("W&B: the wandb package is not installed (pip install wandb); training goes on without it", file=sys.stderr)
        return None
    try:
        return wandb.init(project=w.project, entity=w.entity, name=path.name, dir=str(path), mode=w.mode,
                          config=asdict(cfg), settings=wandb.Settings(init_timeout=60, silent=True))
    except Exception as e:
        print(f"W&B: could not start ({type(e).__name__}: {str(e).splitlines()[0][:200]}); training goes on without it",
              file=sys.stderr)
        return None


def _write_csv_atomic(path: Path, cols: tuple, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _config_diff(a: dict, b: dict, prefix: str = "") -> str:
    """The first few keys whose values differ between two config dicts, as 'key: a vs b'."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            sub = _config_diff(va, vb, f"{prefix}{k}.")
            out += [sub] if sub else []
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} vs {vb!r}")
    return "; ".join(out[:3])

# ------------------------------------------------------------------------------------ evaluation and pictures


def upscale(frames: np.ndarray, s: int = 3) -> np.ndarray:
    return frames.repeat(s, -2).repeat(s, -1)


def strip(top: np.ndarray, bottom: np.ndarray, s: int = 3) -> np.ndarray:
    """uint8 (N, 84, 84) x 2 -> one uint8 image: `top` frames in a row above `bottom`, upscaled, white gaps."""
    n, g = len(top), 4
    img = np.full((2 * 84 * s + g, n * (84 * s + g) - g), 255, np.uint8)
    for i in range(n):
        x = i * (84 * s + g)
        img[:84 * s, x:x + 84 * s] = upscale(top[i], s)
        img[84 * s + g:, x:x + 84 * s] = upscale(bottom[i], s)
    return img


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


def side_by_side(real: np.ndarray, dream: np.ndarray, s: int = 3) -> np.ndarray:
    """uint8 (H, 84, 84) x 2 -> uint8 (H, 84s, 168s + 4) video frames: real | dream, labelled."""
    from PIL import Image, ImageDraw
    gap = np.full((len(real), 84 * s, 4), 255, np.uint8)
    video = np.concatenate([upscale(real, s), gap, upscale(dream, s)], 2)
    for i in range(len(video)):
        im = Image.fromarray(video[i])
        d = ImageDraw.Draw(im)
        d.text((4, 2), f"real  t={i + 1}", fill=255)
        d.text((84 * s + 8, 2), "dream", fill=255)
        video[i] = np.asarray(im)
    return video


def save_gif(video: np.ndarray, path: str | Path, fps: int) -> None:
    import imageio.v3 as iio
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, video, extension=".gif", duration=1000.0 / fps, loop=0)


def save_mp4(video: np.ndarray, path: str | Path, fps: int) -> bool:
    """MP4 next to a GIF when imageio-ffmpeg is installed (optional); returns whether it was written."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    import imageio.v3 as iio
    h, w = (d - d % 16 for d in video.shape[1:3])  # H.264 wants sizes divisible by 16 (macro blocks)
    iio.imwrite(path, video[:, :h, :w], extension=".mp4", fps=fps, codec="libx264", plugin="FFMPEG")
    return True


def evaluate(cfg: Config, wm: WorldModel, val: FrameData, write_assets: bool = True) -> dict:
    """Held-out figures (reconstruction MSE, object agreement, dream tracking) and the two assets."""
    frames = np.asarray(val.frames)
    recon = wm.reconstruct(frames)
    real_probe = probe(frames)
    rec = reconstruction_figures(frames, recon, real_probe)
    has_ball = real_probe["ball"]
    # Dream from the first held-out window long enough, with the actions the player took there.
    K, H = wm.context, cfg.eval.rollout_frames
    s = val.starts(K + H)
    if len(s) == 0:
        raise ValueError(f"no held-out episode holds {K + H} frames: raise data.val_steps or lower eval.rollout_frames")
    s = int(s[0])
    dream = wm.rollout(frames[s:s + K], val.actions[s + K - 1:s + K - 1 + H], val.actions[s:s + K - 1])
    real = frames[s + K:s + K + H]
    if write_assets:
        pick = np.flatnonzero(has_ball)
        pick = pick[np.linspace(0, len(pick) - 1, 8).astype(int)] if len(pick) >= 8 else np.arange(min(8, len(val)))
        save_recon_png(frames[pick], recon[pick], Path(cfg.experiment.assets_dir) / "real_vs_recon.png")
        save_gif(side_by_side(real, dream), Path(cfg.experiment.assets_dir) / "pong_fake.gif", cfg.eval.fps)
    return {
        "val_frames": len(val), "val_recon_mse": rec["mse"], "recon_ball": rec["ball"],
        "recon_ball_present": rec["ball_on_frames_with_ball"], "recon_player": rec["player"],
        "recon_opponent": rec["opponent"],
    } | dream_figures(wm, val)


def reconstruction_figures(frames: np.ndarray, recon: np.ndarray, real_probe: dict | None = None) -> dict[str, float]:
    """Pixel MSE and object agreement of reconstructions of real uint8 (N, 84, 84) frames; pass
    probe(frames) if it is at hand."""
    pr = probe(frames) if real_probe is None else real_probe
    ok = compare_probes(pr, probe(recon))
    has_ball = pr["ball"]
    return {"mse": pixel_mse(recon, frames),
            "ball_on_frames_with_ball": float(ok["ball"][has_ball].mean()) if has_ball.any() else float("nan"),
            **{k: float(ok[k].mean()) for k in ("ball", "player", "opponent")}}


def dream_figures(wm: WorldModel, data: FrameData, horizon: int = 30, every: int = 25, max_starts: int = 400) -> dict:
    """Open-loop dreams from many start points (every `every` frames) against the real continuation,
    with the recorded actions; and the copy-last-frame baseline on the same windows.

    Per method: pixel MSE, the share of (start, step) pairs whose ball / paddles are kept (the
    probe's 2 px / 1 px rules), and the median first step at which the ball is lost.
    """
    K = wm.context
    starts = data.starts(K + horizon)[::every]
    if len(starts) > max_starts:  # a large held-out split: as many starts, spread evenly, as memory allows
        starts = starts[np.linspace(0, len(starts) - 1, max_starts).astype(int)]
    if len(starts) == 0:
        raise ValueError(f"no episode holds {K + horizon} frames for {horizon}-step dreams")
    real = data.frames[starts[:, None] + np.arange(K, K + horizon)]                  # (S, H, 84, 84)
    preds = {"dream": rollouts(wm, *rollout_inputs(data, starts, K, horizon))[0],
             "copy_last": np.repeat(data.frames[starts + K - 1][:, None], horizon, 1)}
    out = {"dream_starts": len(starts), "dream_horizon": horizon}
    for name, pred in preds.items():
        f = frame_and_object_metrics(real, pred, with_ssim=False)
        out[f"{name}_mse"] = float(f["mse"].mean())
        for k in ("ball", "player", "opponent"):
            out[f"{name}_{k}"] = float(f[k].mean())
        out[f"{name}_ball_tracked_median"] = float(np.median(tracking_horizon(f["ball"])))
    return out


def heldout_data(wm: WorldModel, cfg: HeldoutConfig) -> FrameData:
    """Freshly recorded episodes the model never trained on: another seed than its recordings."""
    d = wm.cfg.data
    if d.source == "ale" and cfg.policy == d.policy and cfg.seed in (d.seed, d.val_seed):
        raise ValueError(f"eval seed {cfg.seed} is one of the training recording's seeds ({d.seed}, {d.val_seed})")
    return record(wm.game, cfg.steps, cfg.seed, cfg.policy)


def spread_starts(data: FrameData, length: int, n: int) -> np.ndarray:
    """n window starts, evenly over all windows of `length` frames that stay inside one episode."""
    s = data.starts(length)
    if len(s) == 0:
        raise ValueError(f"no held-out episode holds {length} frames: record more (HeldoutConfig.steps)")
    return s[np.unique(np.linspace(0, len(s) - 1, min(n, len(s))).round().astype(int))]


def rollout_inputs(data: FrameData, starts: np.ndarray, K: int, horizon: int, zero_actions: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Context uint8 (S, K, 84, 84), actions (S, H) and context actions (S, K - 1) of recorded windows.

    The actions taken at the context frames are given (the model knows how the paddle was
    moving); zero_actions replaces every action by -1 (unknown), which the predictor sees as zeros.
    """
    idx = starts[:, None] + np.arange(K + horizon - 1)                        # (S, K + H - 1)
    acts = torch.from_numpy(np.asarray(data.actions, np.int64)[idx])          # (S, K + H - 1); -1 must fit
    if zero_actions:
        acts = torch.full_like(acts, -1)
    return torch.from_numpy(data.frames[idx[:, :K]]), acts[:, K - 1:], acts[:, :K - 1]


def rollouts(wm: WorldModel, context: torch.Tensor, actions: torch.Tensor, context_actions: torch.Tensor,
             batch_frames: int = 3200, progress: bool = False) -> tuple[np.ndarray, float]:
    """wm.rollout_batch over as many starts at once as batch_frames allows: uint8 (S, H, 84, 84), seconds spent."""
    S, H = actions.shape
    out, spent = np.empty((S, H, 84, 84), np.uint8), 0.0
    b = max(1, batch_frames // max(H, 1))
    for i in tqdm(range(0, S, b), desc="rollouts", disable=not progress, leave=False):
        t = time.perf_counter()
        out[i:i + b] = _to_uint8(wm.rollout_batch(context[i:i + b], actions[i:i + b], context_actions[i:i + b]))
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


def frame_and_object_metrics(real: np.ndarray, pred: np.ndarray, with_ssim: bool = True,
                             chunk: int = 1024) -> dict[str, np.ndarray]:
    """Per (rollout, step) figures: uint8 (S, H, 84, 84) x 2 -> dict of (S, H) arrays.

    mse (0..1 scale), ssim, and the probe's comparison: ball / player / opponent kept (bool),
    <obj>_presence (bool), ball_err / player_err / opponent_err (pixels, NaN unless both have it).
    Chunks of frames bound the float copies (SSIM's map is float64).
    """
    S, H = real.shape[:2]
    r, p = real.reshape(-1, 84, 84), pred.reshape(-1, 84, 84)                 # (S * H, 84, 84)
    parts = []
    for i in range(0, len(r), chunk):
        a, b = r[i:i + chunk], p[i:i + chunk]
        out = {"mse": ((b.astype(np.float32) - a) ** 2).mean((1, 2)) / 255 ** 2}
        if with_ssim:
            out["ssim"] = ssim_frames(a, b)
        parts.append(out | compare_probes(probe(a), probe(b)))
    return {k: np.concatenate([q[k] for q in parts]).reshape(S, H) for k in parts[0]}


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
    which it moved >= 0.5 px; <paddle>_intact: share of frames where the paddle shows a plausible
    block (PADDLE_ROWS visible rows, or fewer while touching a wall).
    """
    p = probe(frames)
    both = p["ball"][:-1] & p["ball"][1:] & same_episode
    step = np.hypot(np.diff(p["ball_x"]), np.diff(p["ball_y"]))
    out = {"ball": float(p["ball"].mean()),
           "ball_moves": float((step[both] >= BALL_MOVES_PX).mean()) if both.any() else float("nan")}
    for k in ("player", "opponent"):
        rows, y = p[k + "_rows"], p[k + "_y"]
        at_wall = (y - (rows - 1) / 2 <= 14.5) | (y + (rows - 1) / 2 >= 75.5)
        ok = p[k] & (rows <= PADDLE_ROWS[1]) & ((rows >= PADDLE_ROWS[0]) | at_wall)
        out[k + "_intact"] = float(ok.mean())
    return out


@torch.no_grad()
def reconstruction_and_one_step(wm: WorldModel, data: FrameData, max_windows: int = 4096,
                                batch: int = 512) -> tuple[dict[str, float], dict[str, float]]:
    """Reconstruction of every held-out frame, and teacher-forced one-step prediction: frame t + K
    from the K real frames before it and their actions.

    Every frame is encoded once; the predictor runs on windows of latents: the same numbers as
    wm.reconstruct and rollout_batch with H = 1, without encoding each frame K + 1 times.
    """
    wm.eval()
    K, p = wm.context, wm.predictor
    frames = data.frames[np.arange(len(data))]                                 # (N, 84, 84)
    z = encode_all(wm, frames, batch)                                          # (N, D)
    recon = np.empty_like(frames)
    for i in range(0, len(z), batch):
        recon[i:i + batch] = _to_uint8(wm.ae.decode(z[i:i + batch]))
    rec = {"frames": len(frames)} | reconstruction_figures(frames, recon)
    mse = pixel_mse
    s = data.starts(K + 1)
    if len(s) == 0:
        return rec, {"windows": 0}
    s = s[np.unique(np.linspace(0, len(s) - 1, min(max_windows, len(s))).round().astype(int))]
    zn = p.normalize(z)
    acts = torch.from_numpy(np.asarray(data.actions, np.int64)).to(wm.device)
    idx = torch.from_numpy(s[:, None] + np.arange(K))                          # (W, K)
    pred = np.concatenate([_to_uint8(wm.ae.decode(p.denormalize(p(zn[j], acts[j])))) for j in idx.split(batch)])
    real = frames[s + K]
    ok = object_agreement(real, pred)
    one = {"windows": len(s), "mse": mse(pred, real), "copy_last_mse": mse(frames[s + K - 1], real)
           } | {k: float(v.mean()) for k, v in ok.items()}
    return rec, one


def triptych(real: np.ndarray, pred: np.ndarray, s: int = 3) -> np.ndarray:
    """uint8 (H, 84, 84) x 2 -> uint8 (H, 84s, 3 * 84s + 8) video: real | prediction | |difference|, step drawn."""
    from PIL import Image, ImageDraw
    diff = np.abs(real.astype(np.int16) - pred).astype(np.uint8)
    gap = np.full((len(real), 84 * s, 4), 255, np.uint8)
    video = np.concatenate([upscale(real, s), gap, upscale(pred, s), gap, upscale(diff, s)], 2)
    for i in range(len(video)):
        im = Image.fromarray(video[i])
        d = ImageDraw.Draw(im)
        for j, label in enumerate((f"real  step {i + 1}", "model", "|difference|")):
            d.text((j * (84 * s + 4) + 4, 2), label, fill=255)
        video[i] = np.asarray(im)
    return video


def save_video(video: np.ndarray, path: Path, fps: int) -> list[str]:
    """GIF always; MP4 too when imageio-ffmpeg is installed. Returns the names of the files written."""
    save_gif(video, path.with_suffix(".gif"), fps)
    h, w = video.shape[1:3]
    padded = np.pad(video, ((0, 0), (0, -h % 16), (0, -w % 16)), constant_values=255)  # save_mp4 crops to 16-px blocks
    mp4 = save_mp4(padded, path.with_suffix(".mp4"), fps)
    return [path.with_suffix(".gif").name] + ([path.with_suffix(".mp4").name] if mp4 else [])


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


def _at(curve: np.ndarray, horizons=SUMMARY_HORIZONS) -> dict[str, float]:
    return {str(h): float(curve[h - 1]) for h in horizons if h <= len(curve)}


def long_rollouts_and_dreams(wm: WorldModel, data: FrameData, cfg: HeldoutConfig, out_dir: Path
                             ) -> tuple[dict, float]:
    """Long rollouts (how long the ball survives; the videos) and dreams with random actions (no
    ground truth: plausibility only, next to real frames). Returns metrics and single-stream fps."""
    K, L, T = wm.context, cfg.long_horizon, cfg.dream_steps
    ls = spread_starts(data, K + L, cfg.long_starts) if cfg.long_starts > 0 and len(data.starts(K + L)) else \
        np.zeros(0, np.int64)
    ds = spread_starts(data, K, cfg.dreams)
    dream_in = list(rollout_inputs(data, ds, K, 1))
    dream_in[1] = torch.from_numpy(np.random.default_rng(cfg.seed).integers(0, wm.num_actions, (len(ds), T)))
    long_in = rollout_inputs(data, ls, K, L)
    if L == T:   # one batch: fewer, larger calls run faster on a CPU
        both = rollouts(wm, *[torch.cat(x) for x in zip(long_in, dream_in)], batch_frames=cfg.batch_frames)[0]
        lmodel, dream = both[:len(ls)], both[len(ls):]
    else:
        lmodel, dream = rollouts(wm, *long_in, cfg.batch_frames)[0], rollouts(wm, *dream_in, cfg.batch_frames)[0]
    m, single = {"long": {"skipped": f"no held-out episode holds {K + L} frames"}, "videos": []}, float("nan")
    if len(ls):
        lreal = data.frames[ls[:, None] + np.arange(K, K + L)]                 # (S, L, 84, 84)
        m["long"] = {"horizon": L, "rollouts": len(ls)}
        for k, v in (("model", lmodel), ("copy_last", np.repeat(data.frames[ls + K - 1][:, None], L, 1))):
            f = frame_and_object_metrics(lreal, v, with_ssim=False)
            m["long"][k] = {"mse": _at(f["mse"].mean(0)), "ball_ok": _at(f["ball"].mean(0)),
                            "ball_tracking_horizon_median": float(np.median(tracking_horizon(f["ball"])))}
        for i in range(min(cfg.videos, len(ls))):
            video = triptych(lreal[i, :cfg.video_steps], lmodel[i, :cfg.video_steps])
            m["videos"] += save_video(video, out_dir / "videos" / f"rollout_{i}", cfg.fps)
        # Single stream: the API a player uses, one start, one frame at a time.
        s = int(ls[0])
        t = time.perf_counter()
        wm.rollout(data.frames[s:s + K], data.actions[s + K - 1:s + K - 1 + L], data.actions[s:s + K - 1])
        single = L / (time.perf_counter() - t)
    same = np.ones(dream.shape[:2], bool)
    same[:, -1] = False                                                        # one dream does not follow another
    ep = np.asarray(data.episode)
    m["dream"] = {"steps": T, "dreams": len(ds), "actions": f"uniform random, seed {cfg.seed}",
                  "model": plausibility(dream.reshape(-1, 84, 84), same.ravel()[:-1]),
                  "real": plausibility(data.frames[np.arange(len(data))], ep[1:] == ep[:-1])}
    return m, single


def evaluate_checkpoint(wm: WorldModel, data: FrameData | None, out_dir: str | Path,
                        cfg: HeldoutConfig | None = None, progress: bool = True, checkpoint: str | None = None) -> dict:
    """Everything issue 5 asks, written to out_dir: metrics.json, metrics_by_horizon.csv, plots/, videos/.

    data: held-out episodes (None: recorded now with cfg.seed and cfg.policy); checkpoint: the file
    `wm` came from, recorded in metrics.json. Returns metrics.json's dict.
    """
    cfg = cfg or HeldoutConfig()
    times, t0 = {}, time.perf_counter()
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    (out_dir / "videos").mkdir(exist_ok=True)
    recorded = data is None
    if recorded:
        data = heldout_data(wm, cfg)
    times["record"] = time.perf_counter() - t0
    wm.eval()
    K, H = wm.context, cfg.horizon
    episodes = len(np.unique(np.asarray(data.episode)))
    m = {"game": wm.game, "context": K, "eval_config": asdict(cfg),
         "data": {"frames": len(data), "episodes": episodes,
                  "source": f"recorded now: seed {cfg.seed}, policy {cfg.policy}" if recorded else "given"}}

    # Open loop from many starts, H steps: the curves.
    t = time.perf_counter()
    starts = spread_starts(data, K + H, cfg.starts)
    real = data.frames[starts[:, None] + np.arange(K, K + H)]                  # (S, H, 84, 84)
    # Model and zero-action starts in one batch: fewer, larger calls run faster on a CPU.
    ins = [torch.cat(x) for x in zip(rollout_inputs(data, starts, K, H), rollout_inputs(data, starts, K, H, True))]
    both, spent = rollouts(wm, *ins, batch_frames=cfg.batch_frames, progress=progress)
    model, zero = both[:len(starts)], both[len(starts):]
    preds = {"model": model, "copy_last": np.repeat(data.frames[starts + K - 1][:, None], H, 1), "zero_action": zero}
    times["open_loop_rollouts"] = time.perf_counter() - t
    t = time.perf_counter()
    per_step = {k: frame_and_object_metrics(real, v) for k, v in preds.items()}
    curves = {k: per_horizon(v) for k, v in per_step.items()}
    times["open_loop_metrics"] = time.perf_counter() - t
    ol = {"horizon": H, "rollouts": len(starts), "episodes": len(np.unique(np.asarray(data.episode)[starts]))}
    for k, ps in per_step.items():
        c, th = curves[k], tracking_horizon(ps["ball"])
        ol[k] = {"mse": _at(c["mse"]), "psnr": _at(c["psnr"]), "ssim": _at(c["ssim"]), "ball_ok": _at(c["ball_ok"]),
                 "player_ok": _at(c["player_ok"]), "opponent_ok": _at(c["opponent_ok"]),
                 "mse_mean": float(c["mse"].mean()), "ball_tracking_horizon_median": float(np.median(th)),
                 "ball_tracking_horizon_mean": float(th.mean())}
    # Worse than doing nothing: horizons where copying the last real frame has the lower MSE.
    worse = np.flatnonzero(curves["copy_last"]["mse"] < curves["model"]["mse"]) + 1
    ol["copy_last_beats_model_mse_at"] = [int(h) for h in worse]
    ol["actions_change_prediction"] = bool((model != zero).any())
    m["open_loop"] = ol
    write_csv(curves, len(starts), out_dir / "metrics_by_horizon.csv")
    plot_curves(curves, len(starts), ol["episodes"], out_dir / "plots")

    t = time.perf_counter()
    long_and_dreams, single = long_rollouts_and_dreams(wm, data, cfg, out_dir)
    m |= long_and_dreams
    times["long_rollouts+dreams+videos"] = time.perf_counter() - t

    t = time.perf_counter()
    m["reconstruction"], m["one_step"] = reconstruction_and_one_step(wm, data)
    times["reconstruction+one_step"] = time.perf_counter() - t

    if cfg.probe_frames > 0 and wm.game == "Pong":
        t = time.perf_counter()
        m["probe_vs_ram"] = validate_probe(*record_labelled(wm.game, cfg.probe_frames, cfg.seed + 1))
        times["probe_check"] = time.perf_counter() - t

    times["total"] = time.perf_counter() - t0
    m["speed"] = {"rollout_fps_batched": 2 * len(starts) * H / spent,
                  "batched_rollouts_at_once": min(2 * len(starts), max(1, cfg.batch_frames // H)),
                  "rollout_fps_single": single, "torch_threads": torch.get_num_threads(), "device": str(wm.device)}
    m["times_s"] = times
    worse = ol["copy_last_beats_model_mse_at"]
    m["warnings"] = [f"copy-last-frame beats the model on MSE at horizons {_ranges(worse)}"] if worse else []
    if checkpoint is not None:
        m["checkpoint"] = checkpoint
    (out_dir / "metrics.json").write_text(json.dumps(m, indent=1))
    return m


def eval_run(checkpoint: str | Path, out_dir: str | Path = "runs", data: FrameData | None = None,
             cfg: HeldoutConfig | None = None, progress: bool = True) -> tuple[Path, dict]:
    """`python world_model.py eval --checkpoint PATH`: runs/<timestamp>_<game>_eval/ with everything in it."""
    wm = WorldModel.load(checkpoint)
    run_dir = Path(out_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}_{wm.game.lower()}_eval"
    while run_dir.exists():
        run_dir = run_dir.with_name(run_dir.name + "_")
    m = evaluate_checkpoint(wm, data, run_dir, cfg, progress=progress, checkpoint=str(checkpoint))
    if progress:
        print_eval_summary(m)
        print(f"run folder        {run_dir}")
    return run_dir, m


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
    print(f"{'':24s}{'model':>12s}{'copy_last':>12s}{'zero_action':>12s}")
    for fig, fmt in (("mse", "{:12.5f}"), ("psnr", "{:12.2f}"), ("ssim", "{:12.3f}"), ("ball_ok", "{:12.1%}"),
                     ("player_ok", "{:12.1%}"), ("opponent_ok", "{:12.1%}")):
        for h in ol["model"][fig]:
            print(f"{fig + ' h=' + h:24s}" + "".join(fmt.format(ol[k][fig][h]) for k in METHODS))
    print(f"{'ball tracked (median)':24s}"
          + "".join(f"{ol[k]['ball_tracking_horizon_median']:8.0f} st" for k in METHODS))
    lg = m["long"]
    if "rollouts" in lg:
        label = f"{lg['horizon']}-step, {lg['rollouts']} starts"
        print(f"{label:24s}" + "".join(f"{lg[k]['ball_tracking_horizon_median']:8.0f} st" if k in lg else f"{'-':>12s}"
                                       for k in METHODS) + "   (ball tracked, median)")
    r, o = m["reconstruction"], m["one_step"]
    print(f"reconstruction    MSE {r['mse']:.5f}  ball {r['ball']:.1%} "
          f"(frames with a ball {r['ball_on_frames_with_ball']:.1%})"
          f"  player {r['player']:.1%}  opponent {r['opponent']:.1%}  ({r['frames']} frames)")
    if o.get("windows"):
        print(f"one step          MSE {o['mse']:.5f} (copy-last {o['copy_last_mse']:.5f})  ball {o['ball']:.1%}  "
              f"player {o['player']:.1%}  opponent {o['opponent']:.1%}  ({o['windows']} windows, teacher-forced)")
    dm, dr = m["dream"]["model"], m["dream"]["real"]
    print(f"dream             {m['dream']['dreams']} x {m['dream']['steps']} steps, {m['dream']['actions']} actions:  "
          f"ball present {dm['ball']:.0%} (real {dr['ball']:.0%})  "
          f"ball moves {dm['ball_moves']:.0%} (real {dr['ball_moves']:.0%})"
          f"  paddles intact {dm['player_intact']:.0%} / {dm['opponent_intact']:.0%} "
          f"(real {dr['player_intact']:.0%} / {dr['opponent_intact']:.0%})")
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

# ------------------------------------------------------------------------------------ play

# UI names -> the ALE action meaning each stands for, first match wins (Pong's paddle moves up on RIGHT).
CONTROLS = {"Up": ("UP", "RIGHT"), "Down": ("DOWN", "LEFT"), "Stay": ("NOOP",), "Fire": ("FIRE",)}


def _controls(meanings: list[str]) -> dict[str, int]:
    """UI name -> ALE action id, from the environment's get_action_meanings()."""
    out = {}
    for name, wanted in CONTROLS.items():
        hit = [meanings.index(m) for m in wanted if m in meanings]
        if hit:
            out[name] = hit[0]
    return out


@contextlib.contextmanager
def _one_thread():
    """Run torch on one thread inside: a batch-1 step is too small to split, and on a busy CPU waiting for the
    second thread dominates (decode measured 1 ms on one thread; on two, median 9 ms, 90th percentile 190 ms)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class PlaySession:
    """A dream the player steers one action at a time, optionally beside the real game fed the same actions.

    It starts from K real frames: a fresh emulator (seeded; K - 1 NOOPs after reset fill the
    context) or frames[start : start + K] of a recording. The dream keeps its window of K latents
    and the actions taken at them, so a step costs one predictor call and one decode.
    History for export: dream_frames[t], real_frames[t] (None without a real game), and
    actions_taken[t - 1], the action that led to frame t; frame 0 is the last context frame.
    """

    def __init__(self, wm: WorldModel, real: bool = True, seed: int = 0, data: FrameData | None = None,
                 start: int = 0):
        if data is not None and real:
            raise ValueError("a recording cannot be replayed with other actions: use real=False with data=")
        self.wm, self.K = wm.eval(), wm.context
        self.has_real, self.seed, self.data, self.start = real, seed, data, start
        self.env = make_env(wm.game)  # its action meanings name the controls; it plays the real game, if any
        self.controls = _controls(self.env.unwrapped.get_action_meanings())
        if int(self.env.action_space.n) != wm.num_actions:
            raise ValueError(f"the model has {wm.num_actions} actions, {wm.game}'s emulator {self.env.action_space.n}")
        if data is not None:
            self.close()
        self.reset()

    # -- state
    def reset(self, seed: int | None = None) -> np.ndarray:
        """Restart everything (the real game too, from `seed` or the session's seed); returns frame 0."""
        self.seed = self.seed if seed is None else seed
        self.dream_frames, self.real_frames, self.actions_taken, self.resyncs = [], [], [], []
        if self.data is not None:
            d, s, K = self.data, int(self.start), self.K
            if not (0 <= s and s + K <= len(d) and d.episode[s] == d.episode[s + K - 1]):
                raise ValueError(f"frames[{s}:{s + K}] of the recording cross an episode end or run past it")
            ctx, ctx_actions = np.asarray(d.frames[s:s + K]), np.asarray(d.actions[s:s + K - 1], np.int64)
        else:
            ctx, ctx_actions = self._start_real()
        self._restart(ctx, ctx_actions)
        return self.frame

    def _start_real(self, seeded: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(Re)open the emulator and take K - 1 NOOPs: the K frames and the K - 1 actions at the first K - 1."""
        if self.env is None:
            self.env = make_env(self.wm.game)
        obs, _ = self.env.reset(seed=self.seed if seeded else None)  # unseeded: the emulator's RNG goes on
        frames, noop = [obs], self.controls["Stay"]
        for _ in range(self.K - 1):
            frames.append(self.env.step(noop)[0])
        self._real_ctx, self._real_acts = frames, [noop] * (self.K - 1)
        if not self.has_real:  # the emulator only supplied the start
            self.env.close()
            self.env = None
        return np.stack(frames), np.array(self._real_acts, np.int64)

    @torch.no_grad()
    def _restart(self, context: np.ndarray, context_actions: np.ndarray) -> None:
        """Dream from these K real frames: encode them once; the next steps only predict and decode."""
        self.context = np.ascontiguousarray(context)                              # uint8 (K, 84, 84)
        with _one_thread():
            self._z = self.wm.encode_context(torch.from_numpy(self.context)[None])   # (1, K, D)
        self._past = torch.as_tensor(context_actions, dtype=torch.long).view(1, self.K - 1).to(self.wm.device)
        self.frame = self.context[-1]
        self.real_frame = self.context[-1] if self.has_real else None
        self.resyncs.append(len(self.dream_frames))
        self.dream_frames.append(self.frame)
        self.real_frames.append(self.real_frame)
        if len(self.dream_frames) > 1:  # a restart mid-session: the frame it shows follows no action
            self.actions_taken.append(-1)

    @property
    def t(self) -> int:
        """Frames shown since the start (0 before the first step)."""
        return len(self.dream_frames) - 1

    def action(self, a: int | str) -> int:
        """'Up' / 'Down' / 'Stay' / 'Fire' or an ALE action id -> the id, checked."""
        if isinstance(a, str):
            if a not in self.controls:
                raise ValueError(f"unknown control {a!r}; available: {', '.join(self.controls)}")
            return self.controls[a]
        if not 0 <= int(a) < self.wm.num_actions:
            raise ValueError(f"action {a} outside [0, {self.wm.num_actions})")
        return int(a)

    # -- play
    @torch.no_grad()
    def step(self, action: int | str) -> np.ndarray:
        """Dream one step with `action` (the real game, if any, takes it too): uint8 (84, 84)."""
        a = self.action(action)
        acts = torch.cat([self._past, torch.tensor([[a]], device=self.wm.device)], 1)  # (1, K): action at each latent
        with _one_thread():
            self._z, frame = self.wm.dream_step(self._z, acts)
        self.frame = _to_uint8(frame)[0]                                          # (84, 84)
        self._past = acts[:, 1:]
        self.dream_frames.append(self.frame)
        self.actions_taken.append(a)
        if self.has_real:
            obs, _, terminated, truncated, _ = self.env.step(a)
            self._real_ctx = self._real_ctx[1:] + [obs]
            self._real_acts = (self._real_acts + [a])[1:] if self.K > 1 else []  # at the first K - 1 of _real_ctx
            self.real_frame = obs
            self.real_frames.append(obs)
            if terminated or truncated:  # a match is over: a new one, and the dream restarts from it
                self._restart(*self._start_real(seeded=False))
        else:
            self.real_frames.append(None)
        return self.frame

    def resync(self) -> np.ndarray:
        """Restart the dream from the real game's last K frames (and the actions taken at them)."""
        if not self.has_real:
            raise RuntimeError("resync needs the real game: PlaySession(wm, real=True)")
        self._restart(np.stack(self._real_ctx), np.array(self._real_acts, np.int64))
        return self.frame

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    # -- pictures
    def render(self, scale: int = 3, t: int | None = None) -> np.ndarray:
        """Frame t (default: the current one) as uint8 (84s, W): dream | real | |difference|, labelled."""
        t = self.t if t is None else t
        return compose(self.dream_frames[t], self.real_frames[t], scale, f"dream t={t}", resync=t in self.resyncs)

    def save_gif(self, path: str | Path, fps: int = 15, scale: int = 3) -> Path:
        """The whole session as a GIF (one frame per step, frame 0 included)."""
        save_gif(np.stack([self.render(scale, t) for t in range(self.t + 1)]), path, fps)
        return Path(path)


def compose(dream: np.ndarray, real: np.ndarray | None, scale: int = 3, label: str = "dream",
            resync: bool = False) -> np.ndarray:
    """uint8 (84, 84) x 2 -> uint8 (84s, 3 * 84s + 8): dream | real | |dream - real|; dream alone without real."""
    from PIL import Image, ImageDraw
    panels, names = [dream], [label + ("  (real start)" if resync else "")]
    if real is not None:
        diff = np.abs(dream.astype(np.int16) - real.astype(np.int16)).astype(np.uint8)
        panels, names = [dream, real, diff], names + ["real", "|difference|"]
    gap = np.full((84 * scale, 4), 255, np.uint8)
    parts = []
    for p in panels:
        parts += [upscale(p, scale), gap]
    img = Image.fromarray(np.concatenate(parts[:-1], 1))
    d = ImageDraw.Draw(img)
    for i, name in enumerate(names):
        d.text((i * (84 * scale + 4) + 4, 2), name, fill=255)
    return np.asarray(img)


def _png(img: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="png", compress_level=1)  # fast; the frames are flat greys
    return buf.getvalue()


def latest_checkpoint(out_dir: str | Path = "runs", name: str = "last.pt") -> Path:
    """The newest run's checkpoints/<name> under out_dir: the run the notebook or the CLI just finished."""
    found = sorted(Path(out_dir).glob(f"*/checkpoints/{name}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no checkpoint under {out_dir}: train one first (python world_model.py)")
    return found[-1]


def _model(model: WorldModel | str | Path) -> WorldModel:
    return model if isinstance(model, WorldModel) else WorldModel.load(model)


def play_widget(model: WorldModel | str | Path, real: bool = True, scale: int = 3, fps: int = 15, seed: int = 0,
                gif_path: str | Path = "play.gif"):
    """A notebook player (core ipywidgets, 7.x or 8.x, so Colab works): returns the widget box.

    Buttons set the held action and, while paused, step once; the Play ticker steps at `fps`
    with the held action. Ticks come from the browser (ipywidgets.Play), not from a kernel
    thread: Colab does not show widget updates made from background threads.
    box.session, box.buttons and box.ticker are there for scripts and tests.
    """
    import ipywidgets as w
    s = PlaySession(_model(model), real=real, seed=seed)
    held = {"name": "Stay"}
    image = w.Image(value=_png(s.render(scale)), format="png")
    status = w.Label(f"t=0  {'dream | real game | |difference|' if real else 'dream'}: press a button or run")
    log = w.Output()  # exceptions raised in callbacks show here

    def show(note: str) -> None:
        image.value = _png(s.render(scale))
        status.value = f"t={s.t}  action={held['name']}  {note}"

    def advance() -> None:
        t0 = time.perf_counter()
        s.step(held["name"])
        png = _png(s.render(scale))
        ms = 1000 * (time.perf_counter() - t0)
        image.value = png
        status.value = f"t={s.t}  action={held['name']}  {ms:.1f} ms/step"

    # Ticks come from the browser: Play's timer runs in the frontend and each tick sets `value`.
    ticker = w.Play(value=0, min=0, max=10 ** 9, step=1, interval=round(1000 / fps), description="run",
                    show_repeat=False)
    rate = w.IntSlider(value=fps, min=1, max=30, description="fps")

    def playing() -> bool:  # the trait is '_playing' in ipywidgets 7 (Colab's preinstalled version)
        return bool(getattr(ticker, "playing", getattr(ticker, "_playing", False)))

    @log.capture()
    def on_tick(change) -> None:
        if change["new"] > change["old"]:  # the stop button rewinds the value: no step
            advance()

    def control(name: str):
        @log.capture()
        def on_click(_) -> None:
            held["name"] = name
            advance() if not playing() else show("")
        return on_click

    @log.capture()
    def on_resync(_) -> None:
        s.resync()
        show("dream restarted from the real game")

    @log.capture()
    def on_reset(_) -> None:
        s.reset()
        show("restarted")

    @log.capture()
    def on_save(_) -> None:
        show(f"saved {s.save_gif(gif_path, rate.value)} ({s.t + 1} frames)")

    buttons = {n: w.Button(description=n, layout=w.Layout(width="70px")) for n in ("Up", "Down", "Stay", "Fire")}
    for n, b in buttons.items():
        b.on_click(control(n))
    extra = {"Resync": w.Button(description="Resync", disabled=not real), "Reset": w.Button(description="Reset"),
             "Save GIF": w.Button(description="Save GIF")}
    for b, fn in zip(extra.values(), (on_resync, on_reset, on_save)):
        b.on_click(fn)
    buttons.update(extra)
    ticker.observe(on_tick, "value")
    rate.observe(lambda ch: setattr(ticker, "interval", round(1000 / ch["new"])), "value")
    box = w.VBox([image, status, w.HBox([buttons[n] for n in ("Up", "Down", "Stay", "Fire")]),
                  w.HBox([ticker, rate]), w.HBox(list(extra.values())), log])
    box.session, box.buttons, box.ticker = s, buttons, ticker
    return box


def _no_display(why: str) -> int:
    print(f"play: no display ({why}): use the notebook's play cell, or a virtual display: "
          f"xvfb-run -a python world_model.py play --checkpoint ...", file=sys.stderr)
    return 1


def play_desktop(checkpoint: str | Path, real: bool = True, fps: int = 15, seed: int = 0, scale: int = 3,
                 max_steps: int | None = None, gif: str | Path | None = None) -> int:
    """A matplotlib window: hold Up/Down arrows to move, space = Fire, R = resync, Esc = quit.

    A tap counts for at least one step. Ends on Esc, on closing the window or after max_steps;
    prints one summary line; writes the session to `gif` if given. Returns 0, or 1 (and one line
    on stderr) where no window can open.
    """
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return _no_display("DISPLAY is not set")
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.backends import BackendFilter, backend_registry
    s = PlaySession(WorldModel.load(checkpoint), real=real, seed=seed)
    img = s.render(scale)
    try:
        if matplotlib.get_backend().lower() not in backend_registry.list_builtin(BackendFilter.INTERACTIVE):
            plt.switch_backend("TkAgg")  # Agg was chosen earlier in this process (e.g. by save_recon_png)
        with plt.rc_context({"toolbar": "None"}):
            fig = plt.figure(figsize=(img.shape[1] / 100, img.shape[0] / 100), dpi=100)  # one pixel per pixel
    except Exception as e:  # Tk's "couldn't connect to display", a missing GUI toolkit, ...
        s.close()
        return _no_display(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no window'}")
    fig.canvas.manager.set_window_title("Neural-Atari Regen: play")
    fig.canvas.mpl_disconnect(fig.canvas.manager.key_press_handler_id)  # 'r' would reset the view, 'q' quit, ...
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    im = ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    keys = {"up": "Up", "down": "Down", " ": "Fire"}
    state = {"held": "Stay", "tap": None, "ms": []}

    def key(e) -> str:
        return (e.key or "").split("+")[-1].lower()

    def on_press(e) -> None:
        if key(e) in keys:
            state["held"] = state["tap"] = keys[key(e)]
        elif key(e) == "r" and s.has_real:
            s.resync()
        elif key(e) == "escape":
            plt.close(fig)

    def on_release(e) -> None:
        if keys.get(key(e)) == state["held"]:
            state["held"] = "Stay"

    def tick() -> None:
        t0 = time.perf_counter()
        s.step(state["tap"] or state["held"])
        state["tap"] = None
        frame = s.render(scale)
        im.set_data(frame)  # what a full redraw (expose, resize) shows
        # Matplotlib's image resampling costs 6-25 ms a frame here; at one pixel per pixel, writing the
        # frame into the canvas's own RGBA buffer and blitting costs well under 1 ms.
        buf = np.asarray(fig.canvas.get_renderer().buffer_rgba())  # (H, W, 4) view of the canvas
        if buf.shape[:2] == frame.shape:
            buf[..., :3] = frame[..., None]
            fig.canvas.blit(fig.bbox)
        else:  # a resized window, or Tk's pixel ratio (fig.dpi) is not 1: matplotlib scales
            if not state.get("fitted"):  # once: one canvas pixel per frame pixel
                state["fitted"] = True
                fig.set_size_inches((frame.shape[1] + 0.5) / fig.dpi, (frame.shape[0] + 0.5) / fig.dpi)
            fig.canvas.draw()
        state["ms"].append(1000 * (time.perf_counter() - t0))
        if max_steps is not None and s.t >= max_steps:
            timer.stop()
            plt.close(fig)

    for name, fn in (("key_press_event", on_press), ("key_release_event", on_release)):
        fig.canvas.mpl_connect(name, fn)
    timer = fig.canvas.new_timer(interval=max(1, round(1000 / fps)))
    timer.add_callback(tick)
    timer.start()
    plt.show()
    timer.stop()
    counts = {n: sum(a == i for a in s.actions_taken) for n, i in s.controls.items()}
    print(f"played {s.t} steps, {np.median(state['ms']) if state['ms'] else float('nan'):.1f} ms/step (median, "
          f"with drawing): " + " ".join(f"{n} {c}" for n, c in counts.items()))
    if gif:
        print(f"wrote {s.save_gif(gif, fps, scale)}")
    s.close()
    return 0


def bench_play(wm: WorldModel, steps: int = 200, real: bool = True, scale: int = 3) -> dict:
    """Median milliseconds per step over `steps` steps of an Up/Down/Stay script: the dream alone
    (predict + decode), with the real game, and with the notebook's drawing (compose + PNG)."""
    s = PlaySession(wm, real=real)
    script = np.tile([2, 2, 3, 3, 0], steps // 5 + 1)[:steps]
    step_ms, draw_ms = [], []
    for a in script:
        t0 = time.perf_counter()
        s.step(int(a))
        t1 = time.perf_counter()
        _png(s.render(scale))
        t2 = time.perf_counter()
        step_ms.append(1000 * (t1 - t0)), draw_ms.append(1000 * (t2 - t1))
    s.close()
    step_ms, draw_ms = np.array(step_ms), np.array(draw_ms)
    total = step_ms + draw_ms
    return {"steps": steps, "real": real, "step_ms": float(np.median(step_ms)), "draw_ms": float(np.median(draw_ms)),
            "total_ms": float(np.median(total)), "total_p90_ms": float(np.percentile(total, 90))}

# ------------------------------------------------------------------------------------ command line


def load_data(cfg: Config) -> tuple[FrameData, FrameData]:
    """(train, held-out) by data.source: recorded now from ALE with two seeds, or a dataset split by whole episodes."""
    d = cfg.data
    if d.source == "ale":
        return record(d.game, d.train_steps, d.seed, d.policy), record(d.game, d.val_steps, d.val_seed, d.policy)
    from data.d4rl_frames import load_source, split_episodes
    return split_episodes(load_source(d.source, game=d.game), d.val_fraction)


def run(cfg: Config, progress: bool = True, resume: str | Path | None = None) -> dict:
    """The whole pipeline: data, both loops, held-out figures, the assets. `resume`: a run folder to continue."""
    times, t0 = {}, time.perf_counter()
    ckpt = None
    if resume is not None:
        run_, ckpt = Run.reopen(resume)
        cfg = run_.cfg
    train, val = load_data(cfg)
    if ckpt is not None and ckpt["num_actions"] != train.num_actions:
        raise ValueError(f"the run's model has {ckpt['num_actions']} actions but {cfg.data.source} data of "
                         f"{train.game} has {train.num_actions}: a model only trains on its own game's action set")
    times["data"] = time.perf_counter() - t0
    if ckpt is None:
        run_ = Run.create(cfg)
    t = time.perf_counter()
    ae_hist = []
    if ckpt is None or ckpt["phase"] == "ae":
        wm, ae_hist = train_autoencoder(cfg, train, val, progress=progress, run=run_, resume=ckpt)
        ckpt = None
    else:
        wm = WorldModel.from_checkpoint(ckpt).to(train_device(cfg))
    times["autoencoder"] = time.perf_counter() - t
    t = time.perf_counter()
    wm, pred_hist = train_predictor(cfg, wm, train, val, progress=progress, run=run_, resume=ckpt)
    times["predictor"] = time.perf_counter() - t
    t = time.perf_counter()
    summary = evaluate(cfg, wm, val)
    times["eval+assets"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    summary.update(run_dir=str(run_.path), times_s=times,
                   val_pred_1step=pred_hist[-1]["pred_1step"] if pred_hist else float("nan"),
                   train_frames=len(train), train_episodes=len(train.episode_slices()))
    run_.finish(summary)
    summary.update(ae_history=ae_hist, pred_history=pred_hist)
    if progress:
        print_summary(summary)
    return summary


def print_summary(s: dict) -> None:
    t = s["times_s"]
    print(f"\nrun folder        {s['run_dir']}")
    print(f"data              {t['data']:6.1f} s  {s['train_frames']} training frames ({s['train_episodes']} episodes), "
          f"{s['val_frames']} held-out frames from other episodes")
    print(f"autoencoder       {t['autoencoder']:6.1f} s  held-out reconstruction MSE {s['val_recon_mse']:.5f}")
    print(f"predictor         {t['predictor']:6.1f} s  held-out one-step latent error {s['val_pred_1step']:.4f} (normalised)")
    print(f"eval + assets     {t['eval+assets']:6.1f} s  total {t['total']:.1f} s")
    print(f"held-out objects  ball {100 * s['recon_ball']:.1f} %  (on frames with a ball {100 * s['recon_ball_present']:.1f} %)"
          f"  player paddle {100 * s['recon_player']:.1f} %  opponent paddle {100 * s['recon_opponent']:.1f} %")
    for name, label in (("dream", "dream"), ("copy_last", "copy-last-frame")):
        print(f"{label:17s} {s['dream_horizon']} open-loop steps from {s['dream_starts']} held-out starts: kept ball "
              f"{100 * s[name + '_ball']:.1f} %  player {100 * s[name + '_player']:.1f} %  opponent "
              f"{100 * s[name + '_opponent']:.1f} %  ball tracked {s[name + '_ball_tracked_median']:.0f} steps (median)"
              f"  MSE {s[name + '_mse']:.5f}")


def play_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="world_model.py play", description="play Pong inside the world model: "
                                 "arrow keys move, space fires, R resyncs the dream with the real game, Esc quits")
    ap.add_argument("--checkpoint", help="a checkpoint (default: the newest runs/*/checkpoints/last.pt)")
    ap.add_argument("--out_dir", default="runs", help="where to look for the newest run (default: runs)")
    ap.add_argument("--no-real", action="store_true", help="the dream alone, no real game beside it")
    ap.add_argument("--fps", type=int, default=15, help="steps per second (default 15, Pong's agent rate)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the real game")
    ap.add_argument("--bench", action="store_true", help="print milliseconds per step instead of opening a window")
    args = ap.parse_args(argv)
    ckpt = args.checkpoint or latest_checkpoint(args.out_dir)
    if args.bench:
        print(json.dumps(bench_play(WorldModel.load(ckpt), real=not args.no_real)))
        return 0
    return play_desktop(ckpt, real=not args.no_real, fps=args.fps, seed=args.seed)


def eval_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="world_model.py eval", description="measure a checkpoint on held-out Pong: "
                                 "open-loop rollouts vs the real game by horizon, baselines, reconstruction, dreams",
                                 epilog="overrides: heldout.<field>=value (HeldoutConfig in world_model.py), "
                                 "experiment.out_dir=...")
    ap.add_argument("--checkpoint", help="default: the newest runs/*/checkpoints/best.pt")
    ap.add_argument("--data", help="held-out data instead of a fresh recording: a dataset folder or d4rl:<id>; "
                    "if it is the model's training source, only its held-out episodes are used")
    ap.add_argument("--config", help="YAML file merged into the defaults before the overrides")
    ap.add_argument("overrides", nargs="*", help="key=value pairs")
    args = ap.parse_args(argv)
    cfg = make_config(args.overrides, args.config)
    ckpt = args.checkpoint or latest_checkpoint(cfg.experiment.out_dir, "best.pt")
    data = None
    if args.data:
        from data.d4rl_frames import load_source, split_episodes
        wm = WorldModel.load(ckpt)
        data = load_source(args.data, game=wm.game, num_actions=wm.num_actions)
        if args.data == wm.cfg.data.source:  # never score the model on its own training episodes
            data = split_episodes(data, wm.cfg.data.val_fraction)[1]
    eval_run(ckpt, cfg.experiment.out_dir, data, cfg.heldout)
    return 0


COMMANDS = {"eval": eval_main, "play": play_main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        try:
            return COMMANDS[argv[0]](argv[1:])
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="overrides: dot-notation keys of Config, e.g. ae.steps=1000 data.game=Pong. "
                                 "Other commands: python world_model.py eval --help, python world_model.py play --help")
    ap.add_argument("--config", help="YAML file merged into the defaults before the overrides")
    ap.add_argument("--resume", metavar="RUN_DIR", help="continue the run in this folder from its last checkpoint")
    ap.add_argument("overrides", nargs="*", help="key=value pairs")
    args = ap.parse_args(argv)
    try:
        if args.resume:
            if args.overrides or args.config:
                raise ValueError("--resume takes no --config or overrides: a run continues with its own resolved_config.yaml")
            run(make_config(), resume=args.resume)
        else:
            run(make_config(args.overrides, args.config))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: continue with python world_model.py --resume <run folder> (it restarts from the last "
              "checkpoint, written at every validation)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
