"""Neural-Atari Regen: a world model of Atari Pong you can train on a laptop in two minutes.

An autoencoder squeezes each 84x84 grey frame into a 128-D latent; a predictor maps the last K
latents and the player's action to the next latent; rolled out open loop it dreams the game.

    python world_model.py                                  # record frames, train both, write assets/
    python world_model.py ae.steps=1000 model.context=1    # dot-notation overrides of Config
    python world_model.py --config my.yaml pred.lr=3e-4    # a YAML file first, then overrides

    from world_model import WorldModel
    wm = WorldModel.load("runs/<run>/checkpoints/last.pt")
    wm.rollout(context, actions)                           # uint8 (K, 84, 84), int (H,) -> uint8 (H, 84, 84)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm.auto import tqdm

from data.d4rl_frames import FrameData, record
from data.probe import object_agreement, probe

CHECKPOINT_FORMAT = 1

# ------------------------------------------------------------------------------------ config


@dataclass
class DataConfig:
    game: str = "Pong"            # ALE game name, as in ALE/<game>-v5
    train_steps: int = 5000       # frames recorded for training
    val_steps: int = 1000         # held-out frames, from separate episodes (val_seed)
    seed: int = 0                 # seed of the training recording (emulator no-ops and policy)
    val_seed: int = 1             # seed of the held-out recording; must differ from seed
    policy: str = "random"        # policy that plays while recording


@dataclass
class ModelConfig:
    latent_dim: int = 128         # size of a frame's latent
    width: int = 64               # channels of the autoencoder's 21x21 and 11x11 feature maps
    context: int = 4              # K: latents the predictor sees (1 allowed)
    action_conditioned: bool = True  # False: pure dynamics, the action is not an input
    hidden: int = 512             # predictor MLP width


@dataclass
class AEConfig:
    steps: int = 500              # optimizer steps of the autoencoder loop
    batch_size: int = 128         # frames per step
    lr: float = 3e-3              # peak learning rate (one-cycle schedule)
    fg_weight: float = 100.0      # extra loss weight on pixels that differ from the background
    bright_weight: float = 300.0  # extra weight on bright foreground pixels (Pong's ball)
    fg_threshold: float = 0.05    # |pixel - background| above this is foreground (0..1 scale)
    bright_threshold: float = 0.6  # pixels above this are 'bright' (the ball peaks at 0.8-0.93)
    peak_weight: float = 100.0    # weight of the max-pooled (3x3) MSE on bright pixels: keeps the ball sharp
    grad_clip: float = 1.0        # max gradient norm (the weights jump when a ghost object appears)


@dataclass
class PredConfig:
    steps: int = 500              # optimizer steps of the predictor loop
    batch_size: int = 128         # windows per step
    lr: float = 1e-3              # peak learning rate (one-cycle schedule)
    unroll: int = 4               # open-loop steps per training window (1 = teacher forcing)
    grad_clip: float = 1.0        # max gradient norm
    unknown_past_prob: float = 0.25  # share of windows trained without the actions before the last context frame


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ae: AEConfig = field(default_factory=AEConfig)
    pred: PredConfig = field(default_factory=PredConfig)
    seed: int = 0                 # seeds torch (initialisation, batches)
    device: str = "auto"          # auto | cpu | cuda | mps
    eval_every: int = 100         # held-out loss every this many steps
    out_dir: str = "runs"         # run folders go here
    assets_dir: str = "assets"    # real_vs_recon.png and pong_fake.gif go here
    rollout_frames: int = 200     # length of the dreamed GIF
    fps: int = 15                 # GIF frame rate (Pong runs at 15 agent steps a second)

    def check(self) -> "Config":
        """Inconsistent combinations are errors before anything runs."""
        if self.data.val_seed == self.data.seed:
            raise ValueError("data.val_seed must differ from data.seed: held-out episodes are never training episodes")
        for name, v in [("model.context", self.model.context), ("ae.steps", self.ae.steps),
                        ("pred.steps", self.pred.steps), ("pred.unroll", self.pred.unroll),
                        ("data.train_steps", self.data.train_steps), ("data.val_steps", self.data.val_steps)]:
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.model.width % 8:
            raise ValueError(f"model.width must be a multiple of 8 (GroupNorm uses 8 groups), got {self.model.width}")
        need = self.model.context + self.rollout_frames
        if self.data.val_steps < need:
            raise ValueError(f"data.val_steps={self.data.val_steps} is too short for a {self.rollout_frames}-frame "
                             f"rollout after {self.model.context} context frames: use >= {need}")
        return self


# A few seconds end to end: the tests and the notebook's WM_SMOKE=1 mode use it.
SMALL_BUDGET = ("data.train_steps=400", "data.val_steps=300", "ae.steps=40", "pred.steps=40", "model.width=16",
                "model.hidden=64", "rollout_frames=20", "eval_every=20")


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

# ------------------------------------------------------------------------------------ models


class Autoencoder(nn.Module):
    """84x84 uint8 frame -> latent -> frame, drawn as a residual over the static background.

    Pixel-unshuffle turns the frame into a 21x21x16 map losslessly, so the ball's exact pixel
    survives the stem at a fraction of the cost of strided convolutions on the full frame.
    """

    def __init__(self, latent_dim: int = 128, width: int = 64):
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
        out = [self.ae(x[i:i + batch_size].to(self.device)) for i in range(0, len(x), batch_size)]
        return _to_uint8(torch.cat(out)) if out else np.zeros((0, 84, 84), np.uint8)

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
        p, dev = self.predictor, self.device
        if context_actions is None:
            context_actions = torch.full((B, K - 1), -1, dtype=torch.long)    # unknown
        history = torch.cat([context_actions.long(), actions.long()], 1).to(dev)  # (B, K - 1 + H)
        z = p.normalize(self.ae.encode(context.flatten(0, 1).to(dev)).view(B, K, -1))  # (B, K, D)
        out = []
        for i in range(actions.shape[1]):
            nxt = p(z, history[:, i:i + K])                                 # (B, D)
            out.append(self.ae.decode(p.denormalize(nxt)))                 # (B, 84, 84)
            z = torch.cat([z[:, 1:], nxt[:, None]], 1)                     # slide the window
        return torch.stack(out, 1) if out else torch.zeros(B, 0, 84, 84)

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
    def load(cls, path: str | Path, device: str = "cpu") -> "WorldModel":
        """Rebuild a model from a checkpoint alone (CPU unless told otherwise)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} not found: train one with `python world_model.py`")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"checkpoint {path} is unreadable ({type(e).__name__}): is it a truncated or foreign file?") from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint {path} is not a Neural-Atari Regen checkpoint of format {CHECKPOINT_FORMAT}")
        cfg = make_config(base=OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), ckpt["config"])))
        wm = cls(cfg, ckpt["num_actions"], ckpt["game"])
        try:
            wm.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])[:300]
            raise ValueError(f"checkpoint {path} does not match the model its config builds: {detail}") from None
        return wm.to(pick_device(device)).eval()

# ------------------------------------------------------------------------------------ batching


def frame_batch(data: FrameData, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """Random single frames: uint8 (B, 84, 84)."""
    idx = torch.randint(len(data), (batch_size,), generator=gen).numpy()
    return torch.from_numpy(data.frames[idx])


def window_batch(starts: np.ndarray, length: int, batch_size: int, gen: torch.Generator) -> np.ndarray:
    """Index windows of `length` consecutive frames inside one episode: int (B, length)."""
    pick = starts[torch.randint(len(starts), (batch_size,), generator=gen).numpy()]
    return pick[:, None] + np.arange(length)[None]

# ------------------------------------------------------------------------------------ training loops


def one_cycle(opt: torch.optim.Optimizer, lr: float, steps: int):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, sched, grad_clip: float) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
    opt.step()
    sched.step()


@torch.no_grad()
def max_pool3(x: torch.Tensor) -> torch.Tensor:
    """3x3 max filter of (B, 1, H, W) as shifted maxima: ~20x faster than max_pool2d's CPU kernel (no indices)."""
    p = F.pad(x, (1, 1, 1, 1), value=-1.0)
    h = torch.maximum(torch.maximum(p[..., :, :-2], p[..., :, 1:-1]), p[..., :, 2:])
    return torch.maximum(torch.maximum(h[..., :-2, :], h[..., 1:-1, :]), h[..., 2:, :])


def ae_loss(ae: Autoencoder, frames: torch.Tensor, c: AEConfig) -> tuple[torch.Tensor, dict]:
    """Object-weighted MSE: plain MSE on a grey Pong screen ignores the 2-pixel ball.

    Pixels where the target or the reconstruction leaves the background weigh 1 + fg_weight, and
    bright ones (the ball) bright_weight more: missing an object and drawing a ghost both cost.
    """
    target = frames.float() / 255                                            # (B, 84, 84)
    recon = ae(frames)
    r, bg = recon.detach(), ae.background
    fg = ((target - bg).abs() > c.fg_threshold) | ((r - bg).abs() > c.fg_threshold)
    bright = fg & ((target > c.bright_threshold) | (r > c.bright_threshold))
    w = 1 + c.fg_weight * fg.float() + c.bright_weight * bright.float()
    loss = (w * (recon - target) ** 2).mean()
    if c.peak_weight > 0:
        # Max-pooled 3x3 images must match too: a ball placed 1 px off costs little here, a ball
        # smeared dim over its possible positions (the MSE-optimal hedge) costs a lot.
        pr, pt = F.max_pool2d(recon[:, None], 3, 1, 1), max_pool3(target[:, None])
        pb = ((pt > c.bright_threshold) | (pr.detach() > c.bright_threshold)).float()
        loss = loss + c.peak_weight * (pb * (pr - pt) ** 2).mean()
    return loss, {"mse": F.mse_loss(recon, target).detach()}


def train_autoencoder(cfg: Config, train: FrameData, val: FrameData, num_actions: int | None = None,
                      progress: bool = True) -> tuple[WorldModel, list[dict]]:
    """Loop 1: fit the autoencoder on single frames. Returns a WorldModel (predictor untrained) and a history."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    dev = pick_device(cfg.device)
    wm = WorldModel(cfg, num_actions or train.num_actions, train.game).to(dev)
    ae = wm.ae
    ae.background.copy_(torch.from_numpy(np.median(train.frames, axis=0).astype(np.float32) / 255))
    # beta2=0.99: the object weights make gradients spiky; a shorter second-moment memory adapts faster.
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.ae.lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = one_cycle(opt, cfg.ae.lr, cfg.ae.steps)
    val_x = torch.from_numpy(val.frames[np.linspace(0, len(val) - 1, min(256, len(val))).astype(int)]).to(dev)
    history = []

    def validate(step: int, loss: float) -> None:
        ae.eval()
        with torch.no_grad():
            vloss, vm = ae_loss(ae, val_x, cfg.ae)
        history.append({"phase": "ae", "step": step, "loss": loss, "val_loss": vloss.item(),
                        "val_mse": vm["mse"].item(), "lr": sched.get_last_lr()[0]})
        bar.set_postfix(loss=f"{loss:.4f}", val=f"{vloss.item():.4f}")

    bar = tqdm(range(1, cfg.ae.steps + 1), desc="autoencoder", disable=not progress, mininterval=1.0)
    validate(0, float("nan"))
    for step in bar:
        ae.train()
        loss, _ = ae_loss(ae, frame_batch(train, cfg.ae.batch_size, gen).to(dev), cfg.ae)
        optimizer_step(loss, opt, sched, cfg.ae.grad_clip)
        if step % cfg.eval_every == 0 or step == cfg.ae.steps:
            validate(step, loss.item())
    return wm.eval(), history


@torch.no_grad()
def encode_all(wm: WorldModel, frames: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """uint8 (N, 84, 84) -> latents (N, D) with the frozen encoder."""
    wm.eval()
    x = torch.from_numpy(frames)
    return torch.cat([wm.ae.encode(x[i:i + batch_size].to(wm.device)) for i in range(0, len(x), batch_size)])


def pred_loss(p: Predictor, z: torch.Tensor, actions: torch.Tensor, unroll: int) -> torch.Tensor:
    """Open-loop latent error over `unroll` steps. z (B, K + U, D) normalised, actions (B, K + U) int."""
    K = p.context
    window, loss = z[:, :K], 0.0
    for u in range(unroll):
        nxt = p(window, actions[:, u:u + K])                                # (B, D)
        loss = loss + F.mse_loss(nxt, z[:, K + u])
        window = torch.cat([window[:, 1:], nxt[:, None]], 1)                 # feed the prediction back
    return loss / unroll


def train_predictor(cfg: Config, wm: WorldModel, train: FrameData, val: FrameData,
                    progress: bool = True) -> tuple[WorldModel, list[dict]]:
    """Loop 2: fit the predictor on latents of the frozen encoder, on windows that never cross an episode end."""
    torch.manual_seed(cfg.seed + 1)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    p, dev = wm.predictor, wm.device
    for prm in wm.ae.parameters():
        prm.requires_grad_(False)
    z_train, z_val = encode_all(wm, train.frames), encode_all(wm, val.frames)  # (N, D)
    p.mean.copy_(z_train.mean(0))
    p.std.copy_(z_train.std(0) + 1e-6)
    z_train, z_val = p.normalize(z_train), p.normalize(z_val)
    a_train, a_val = torch.from_numpy(train.actions).to(dev), torch.from_numpy(val.actions).to(dev)
    L = cfg.model.context + cfg.pred.unroll
    starts = train.starts(L)
    if len(starts) == 0:
        raise ValueError(f"no training episode holds {L} consecutive frames (context + unroll)")
    vstarts = val.starts(L)
    vwin = torch.from_numpy(vstarts[np.linspace(0, len(vstarts) - 1, min(512, len(vstarts))).astype(int), None]
                            + np.arange(L)[None])
    opt = torch.optim.AdamW(p.parameters(), lr=cfg.pred.lr, weight_decay=0.0)
    sched = one_cycle(opt, cfg.pred.lr, cfg.pred.steps)
    history = []

    def validate(step: int, loss: float) -> None:
        p.eval()
        with torch.no_grad():
            v1 = pred_loss(p, z_val[vwin], a_val[vwin], 1).item()
            vu = pred_loss(p, z_val[vwin], a_val[vwin], cfg.pred.unroll).item()
        history.append({"phase": "pred", "step": step, "loss": loss, "val_loss": vu, "val_1step": v1,
                        "lr": sched.get_last_lr()[0]})
        bar.set_postfix(loss=f"{loss:.4f}", val=f"{vu:.4f}")

    bar = tqdm(range(1, cfg.pred.steps + 1), desc="predictor", disable=not progress, mininterval=1.0)
    validate(0, float("nan"))
    for step in bar:
        p.train()
        w = torch.from_numpy(window_batch(starts, L, cfg.pred.batch_size, gen))  # (B, K + U)
        a = a_train[w]
        # As at the start of a dream, some windows do not know the actions before their last context frame.
        unknown = torch.rand(len(a), 1, generator=gen) < cfg.pred.unknown_past_prob
        a[:, :cfg.model.context - 1] = torch.where(unknown.to(dev), -1, a[:, :cfg.model.context - 1])
        loss = pred_loss(p, z_train[w], a, cfg.pred.unroll)
        optimizer_step(loss, opt, sched, cfg.pred.grad_clip)
        if step % cfg.eval_every == 0 or step == cfg.pred.steps:
            validate(step, loss.item())
    return wm.eval(), history

# ------------------------------------------------------------------------------------ evaluation and pictures

def upscale(frames: np.ndarray, s: int = 3) -> np.ndarray:
    return frames.repeat(s, -2).repeat(s, -1)


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

# ------------------------------------------------------------------------------------ command line


def load_data(cfg: Config) -> tuple[FrameData, FrameData]:
    d = cfg.data
    return (record(d.game, d.train_steps, d.seed, d.policy), record(d.game, d.val_steps, d.val_seed, d.policy))


def new_run_dir(cfg: Config) -> Path:
    """runs/<timestamp>_<game>/ with checkpoints/ and the resolved config; never reuses a folder."""
    run_dir = Path(cfg.out_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}_{cfg.data.game.lower()}"
    while run_dir.exists():
        run_dir = run_dir.with_name(run_dir.name + "_")
    (run_dir / "checkpoints").mkdir(parents=True)
    OmegaConf.save(OmegaConf.structured(cfg), run_dir / "resolved_config.yaml")
    return run_dir


def evaluate(cfg: Config, wm: WorldModel, val: FrameData, write_assets: bool = True) -> dict:
    """Held-out figures (reconstruction MSE, object agreement, dream tracking) and the two assets."""
    recon = wm.reconstruct(val.frames)
    mse = float(np.mean((recon.astype(np.float32) - val.frames.astype(np.float32)) ** 2) / 255 ** 2)
    ok = object_agreement(val.frames, recon)
    has_ball = probe(val.frames)["ball"]
    # Dream from the first held-out window long enough, with the actions the player took there.
    K, H = cfg.model.context, cfg.rollout_frames
    s = val.starts(K + H)
    if len(s) == 0:
        raise ValueError(f"no held-out episode holds {K + H} frames: raise data.val_steps or lower rollout_frames")
    s = int(s[0])
    dream = wm.rollout(val.frames[s:s + K], val.actions[s + K - 1:s + K - 1 + H], val.actions[s:s + K - 1])
    real = val.frames[s + K:s + K + H]
    if write_assets:
        pick = np.flatnonzero(has_ball)
        pick = pick[np.linspace(0, len(pick) - 1, 8).astype(int)] if len(pick) >= 8 else np.arange(min(8, len(val)))
        save_recon_png(val.frames[pick], recon[pick], Path(cfg.assets_dir) / "real_vs_recon.png")
        save_gif(side_by_side(real, dream), Path(cfg.assets_dir) / "pong_fake.gif", cfg.fps)
    return {
        "val_frames": len(val), "val_recon_mse": mse,
        "recon_ball": float(ok["ball"].mean()),
        "recon_ball_present": float(ok["ball"][has_ball].mean()) if has_ball.any() else float("nan"),
        "recon_player": float(ok["player"].mean()), "recon_opponent": float(ok["opponent"].mean()),
    } | dream_figures(wm, val)


def dream_figures(wm: WorldModel, data: FrameData, horizon: int = 30, every: int = 25) -> dict:
    """Open-loop dreams from many start points (every `every` frames) against the real continuation,
    with the recorded actions; and the copy-last-frame baseline on the same windows.

    Per method: pixel MSE, the share of (start, step) pairs whose ball / paddles are kept (the
    probe's 2 px / 1 px rules), and the median first step at which the ball is lost.
    """
    K = wm.context
    starts = data.starts(K + horizon)[::every]
    if len(starts) == 0:
        raise ValueError(f"no episode holds {K + horizon} frames for {horizon}-step dreams")
    idx = starts[:, None] + np.arange(K + horizon)                               # (S, K + H)
    dream = _to_uint8(wm.rollout_batch(torch.from_numpy(data.frames[idx[:, :K]]),
                                       torch.from_numpy(data.actions[idx[:, K - 1:-1]]),
                                       torch.from_numpy(data.actions[idx[:, :K - 1]])))  # (S, H, 84, 84)
    real = data.frames[idx[:, K:]]
    copy = np.repeat(data.frames[idx[:, K - 1:K]], horizon, 1)
    out = {"dream_starts": len(starts), "dream_horizon": horizon}
    for name, pred in (("dream", dream), ("copy_last", copy)):
        ok = [object_agreement(r, q) for r, q in zip(real, pred)]
        out[f"{name}_mse"] = float(np.mean((pred.astype(np.float32) - real) ** 2) / 255 ** 2)
        for k in ("ball", "player", "opponent"):
            out[f"{name}_{k}"] = float(np.mean([o[k].mean() for o in ok]))
        out[f"{name}_ball_tracked_median"] = float(np.median([np.argmin(np.append(o["ball"], False)) for o in ok]))
    return out


def run(cfg: Config, progress: bool = True) -> dict:
    """The whole pipeline: record, train both loops, measure on held-out episodes, write the assets."""
    times, t0 = {}, time.perf_counter()
    train, val = load_data(cfg)
    times["data"] = time.perf_counter() - t0
    run_dir = new_run_dir(cfg)
    t = time.perf_counter()
    wm, ae_hist = train_autoencoder(cfg, train, val, progress=progress)
    times["autoencoder"] = time.perf_counter() - t
    t = time.perf_counter()
    wm, pred_hist = train_predictor(cfg, wm, train, val, progress=progress)
    times["predictor"] = time.perf_counter() - t
    wm.save(run_dir / "checkpoints" / "last.pt", step={"ae": cfg.ae.steps, "pred": cfg.pred.steps})
    t = time.perf_counter()
    summary = evaluate(cfg, wm, val)
    times["eval+assets"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    summary.update(run_dir=str(run_dir), times_s=times, val_pred_1step=pred_hist[-1]["val_1step"],
                   train_frames=len(train), train_episodes=int(train.episode[-1] + 1),
                   ae_history=ae_hist, pred_history=pred_hist)
    (run_dir / "summary.json").write_text(json.dumps(
        {k: v for k, v in summary.items() if not k.endswith("_history")}, indent=1))
    if progress:
        print_summary(summary)
    return summary


def print_summary(s: dict) -> None:
    t = s["times_s"]
    print(f"\nrun folder        {s['run_dir']}")
    print(f"data              {t['data']:6.1f} s  {s['train_frames']} training frames ({s['train_episodes']} episodes), "
          f"{s['val_frames']} held-out frames from other episodes")
    print(f"autoencoder       {t['autoencoder']:6.1f} s  held-out reconstruction MSE {s['val_recon_mse']:.5f}")
    print(f"predictor         {t['predictor']:6.1f} s  held-out one-step latent MSE {s['val_pred_1step']:.4f} (normalised)")
    print(f"eval + assets     {t['eval+assets']:6.1f} s  total {t['total']:.1f} s")
    print(f"held-out objects  ball {100 * s['recon_ball']:.1f} %  (on frames with a ball {100 * s['recon_ball_present']:.1f} %)"
          f"  player paddle {100 * s['recon_player']:.1f} %  opponent paddle {100 * s['recon_opponent']:.1f} %")
    for name, label in (("dream", "dream"), ("copy_last", "copy-last-frame")):
        print(f"{label:17s} {s['dream_horizon']} open-loop steps from {s['dream_starts']} held-out starts: kept ball "
              f"{100 * s[name + '_ball']:.1f} %  player {100 * s[name + '_player']:.1f} %  opponent "
              f"{100 * s[name + '_opponent']:.1f} %  ball tracked {s[name + '_ball_tracked_median']:.0f} steps (median)"
              f"  MSE {s[name + '_mse']:.5f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="overrides: dot-notation keys of Config, e.g. ae.steps=1000 data.game=Pong")
    ap.add_argument("--config", help="YAML file merged into the defaults before the overrides")
    ap.add_argument("overrides", nargs="*", help="key=value pairs")
    args = ap.parse_args(argv)
    try:
        cfg = make_config(args.overrides, args.config)
        run(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
