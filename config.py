"""One typed config for every command: defaults here, then a YAML file, then `a.b=value` overrides.

    python world_model.py --show-config [overrides]    # every field: resolved value, allowed values, what it does

Every field's allowed values are in RULES, checked in one place (`Config.check`) before anything is
recorded or written; a bad value is one line naming the field, the value and what is allowed.
"""
from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Optional

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from data import UsageError
from data.d4rl_frames import POLICIES
from data.probe import BALL_THRESHOLD

NC = 7                      # the latent's first NC dims are Pong's object coordinates (world_model.py, models)
LOSSES = ("mse", "huber")
SCHEDULES = ("one_cycle", "cosine", "constant")
PHASES = ("ae", "pred", "tune")   # the training phases, in order (a config section each): loop 1, then loop 2's two


@dataclass
class DataConfig:
    source: str = "ale"           # ale: record now with Gymnasium + ale-py | a dataset folder (ours or the predecessor's) | d4rl:<id>
    game: str = "Pong"            # ALE game name, as in ALE/<game>-v5
    train_steps: int = 10000      # ale source: frames recorded for training
    val_steps: int = 1000         # ale source: held-out frames, from separate episodes (val_seed)
    seed: int = 0                 # ale source: seed of the training recording (emulator no-ops and policy)
    val_seed: int = 1             # ale source: seed of the held-out recording; must differ from seed
    table_steps: int = 10000      # ale source, Pong: frames of tracker play recorded only for the table of the ball's
                                  # steps that dreams look up near walls and paddles (never trained on); 0: none
    table_seed: int = 2           # ale source: seed of that recording; must differ from seed and val_seed
    policy: str = "random+tracker+sticky"  # ale source: who plays: random | tracker (returns the ball) | sticky (random
                                  # actions held ~8 steps: paddles at the walls) | a mix, equal shares
    val_fraction: float = 0.1     # dataset sources: share of whole episodes (the last ones) held out
    num_workers: int = 0          # DataLoader processes gathering autoencoder batches (0: in the main process)
    prefetch_factor: Optional[int] = None  # batches each worker loads ahead; only with num_workers > 0
    persistent_workers: bool = False  # keep workers alive between phases; only with num_workers > 0
    pin_memory: bool = False      # page-locked batches for faster host-to-GPU copies; only on CUDA


@dataclass
class ModelConfig:
    latent_dim: int = 128         # size of a frame's latent
    width: int = 48               # channels of the encoder's 21x21 and 11x11 feature maps (multiple of 8)
    global_width: int = 16        # channels of the global code's decoder (multiple of 8)
    gain: float = 10.0            # initial gain of the encoder's spatial softmax (learned)
    context: int = 4              # K: latents the predictor sees (>= 2: it reads velocities)
    action_conditioned: bool = True  # False: pure dynamics, the action is not an input
    hidden: int = 256             # predictor MLP width
    global_proj: int = 16         # the predictor reads the global code through a projection this wide


@dataclass
class AEConfig:
    steps: int = 500              # optimizer steps of the autoencoder loop
    batch_size: int = 64          # frames per step
    lr: float = 3e-3              # peak learning rate (optim.lr, when set, replaces it)
    schedule: str = "cosine"      # learning-rate schedule: one_cycle | cosine | constant
    loss: str = "mse"             # per-pixel error: mse | huber (the object weights apply to either)
    huber_delta: float = 0.1      # huber: quadratic below this error (pixels on a 0..1 scale)
    fg_weight: float = 100.0      # extra loss weight on pixels that differ from the background
    bright_weight: float = 300.0  # extra weight on bright foreground pixels (Pong's ball)
    fg_threshold: float = 0.05    # |pixel - background| above this is foreground (0..1 scale)
    bright_threshold: float = BALL_THRESHOLD  # pixels above this are 'bright': the probe's ball threshold (0.6)
    peak_weight: float = 100.0    # weight of the max-pooled (3x3) MSE on bright pixels: keeps the ball sharp
    margin_weight: float = 1000.0  # weight of the brightness-margin hinge: only the ball may look like the ball
    margin: float = 0.04          # non-ball pixels stay below bright_threshold - margin, ball pixels above it + margin
    returned_ball_weight: float = 0.0  # frames whose ball moves toward the opponent weigh 1 + this in batches
    grad_clip: float = 1.0        # max gradient norm (the weights jump when a ghost object appears)
    coord_weight: float = 1.0     # weight of the latent's object coordinates against the probe's (Huber, pixels)
    presence_weight: float = 0.5  # weight of the ball-presence logit's cross-entropy
    band_weight: float = 30.0     # extra weight of the score band's squared error (rows above the top wall): the digits


@dataclass
class PredConfig:
    steps: int = 700              # optimizer steps of the predictor loop (its first phase, on pred.coords)
    coords: str = "probe"         # the coordinates it learns from: probe (the probe's positions in the recorded frames:
                                  # no autoencoder needed, so on a CPU it trains beside loop 1, train.beside) | encoder
                                  # (the trained encoder's latents; games without Pong's objects always use these)
    batch_size: int = 256         # windows per step (tune's too)
    lr: float = 2e-3              # peak learning rate (optim.lr, when set, replaces it)
    schedule: str = "cosine"      # learning-rate schedule: one_cycle | cosine | constant
    loss: str = "mse"             # the global code's error: mse | huber (coordinates: Huber, 1 px)
    huber_delta: float = 1.0      # huber: quadratic below this error (the global code is normalised to unit std)
    unroll: int = 8               # open-loop steps per training window (1 = teacher forcing)
    grad_clip: float = 1.0        # max gradient norm
    unknown_past_prob: float = 0.0   # share of windows trained without the actions before the last context frame
                                  # (0: dreams are given them; 0.25 cost the paddle its obedience at the walls)
    ball_weight: float = 3.0      # weight of the ball's x, y against the paddles' edges in the coordinate loss
    ball_delta: float = 0.1       # Huber delta of the ball's x, y (pixels; the paddles': 1)
    global_weight: float = 0.1    # weight of the global code's error
    noise_px: float = 0.1         # Gaussian noise on the context's coordinates (pixels): learn to recover
    noise_global: float = 0.05    # Gaussian noise on the context's normalised global code
    latents_on_disk_above: int = 250_000  # training sets with more frames keep their latents in files (in the run
                                  # folder, deleted after the phase), read per batch: memory does not grow with the set


@dataclass
class TuneConfig:
    """Loop 2's second phase: the predictor on the encoder's own latents (the global code, the encoder's errors)."""
    steps: int = 150              # optimizer steps (0: none; then a pred.coords=probe dream never changes the score band)
    lr: float = 2e-3              # peak learning rate (optim.lr, when set, replaces it)
    schedule: str = "cosine"      # learning-rate schedule: one_cycle | cosine | constant


@dataclass
class OptimConfig:
    lr: Optional[float] = None    # if set, the peak learning rate of both phases (replaces ae.lr and pred.lr)
    beta1: float = 0.9            # AdamW first-moment decay (one_cycle cycles it between 0.85 and 0.95)
    beta2: float = 0.99           # AdamW second-moment decay: short memory, the object weights make gradients spiky
    weight_decay: float = 0.0     # AdamW decoupled weight decay
    warmup: float = 0.1           # share of a phase spent warming up (one_cycle and cosine)


@dataclass
class EvalConfig:
    val_every: int = 250          # validate (held-out losses, figures, images, videos, checkpoints) every this many steps
    log_every: int = 10           # a metrics.csv row every this many steps
    val_frames: int = 256         # held-out frames scored at each autoencoder validation
    video_frames: int = 60        # length of the open-loop video written at each predictor validation
    rollout_frames: int = 200     # length of the final dreamed GIF (assets/pong_fake.gif)
    fps: int = 15                 # GIF frame rate (Pong runs at 15 agent steps a second)
    summary_horizon: int = 30     # the run's closing summary: open-loop steps per rollout (evaluate.py, quick mode)
    summary_starts: int = 40      # the run's closing summary: rollouts, spread evenly over the held-out episodes


@dataclass
class TrainConfig:
    seed: int = 0                 # seeds initialisation and every batch (batch t is drawn from (seed, phase, t))
    device: str = "auto"          # auto (CUDA, then Apple MPS, then CPU) | cpu | cuda | mps
    cpu: bool = False             # force the CPU whatever device says
    precision: str = "fp32"       # fp32 | bf16 | fp16 (autocast; CUDA only)
    compile: bool = False         # torch.compile the training modules (CUDA only; checkpoints hold the plain module)
    beside: bool = True           # on a CPU with >= 2 cores, loop 2's first phase (pred.coords=probe) runs in a second
                                  # process beside loop 1, one thread each (the same result, ~40 % less time)


@dataclass
class WandbConfig:
    mode: str = "disabled"        # disabled | offline | online (needs `pip install wandb`)
    project: str = "neural-atari-regen"  # W&B project
    entity: Optional[str] = None  # W&B team or user (None: your default)


@dataclass
class ExperimentConfig:
    name: str = ""                # run folder suffix (runs/<timestamp>_<name>); empty: the game's name
    out_dir: str = "runs"         # run folders go here
    assets_dir: str = "assets"    # the README's pictures (real_vs_recon.png, pong_fake.gif, dream_strip.png)
    refresh_assets: str = "default"  # when a run rewrites assets_dir: default (runs of the default recipe) | always | never
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class HeldoutConfig:
    """`python world_model.py eval`: held-out episodes, rollouts and pictures (heldout.<field>=value)."""
    steps: int = 3000             # held-out frames recorded when no dataset is given (episodes no run trained on)
    seed: int = 1234              # seed of that recording: never a training seed (checked)
    policy: str = "tracker"       # recording policy: another than training's random play (tracker returns the ball)
    horizon: int = 50             # H: open-loop steps of the curves and the CSV
    starts: int = 96              # open-loop rollouts, start points spread evenly over all episodes
    memory: int = 16              # frames before each start's K a dream may read (within its episode): where the
                                  # ball went out tells when and where the next serve comes; 0: the K frames alone
    long_horizon: int = 200       # steps of the long rollouts (tracking horizon, videos)
    long_starts: int = 8          # long rollouts (0: none)
    dream_steps: int = 200        # steps of each dream with random actions (no ground truth)
    dreams: int = 8               # dreams, from different real contexts
    videos: int = 3               # long rollouts written as GIF (and MP4 when imageio-ffmpeg is installed)
    video_steps: int = 100        # steps shown per video (a noisy 200-step GIF at x3 is ~8 MB)
    probe_frames: int = 1500      # RAM-labelled frames to check the probe on (Pong only; 0: skip)
    batch_frames: int = 3200      # predicted frames held at once (x 28 KB as float): starts per batch = this // horizon
    ssim: bool = True             # SSIM per step (scikit-image; the run's closing summary skips it)
    fps: int = 15                 # video frame rate (Pong runs at 15 agent steps a second)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ae: AEConfig = field(default_factory=AEConfig)
    pred: PredConfig = field(default_factory=PredConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)

    def lr(self, phase: str) -> float:
        """The peak learning rate of a phase: optim.lr when set, else ae.lr / pred.lr / tune.lr."""
        return self.optim.lr if self.optim.lr is not None else getattr(self, phase).lr

    def refreshes_assets(self) -> bool:
        """Whether this run rewrites experiment.assets_dir (every run keeps its own pictures in its folder)."""
        mode = self.experiment.refresh_assets
        return mode == "always" or (mode == "default" and recipe(self) == recipe(Config()))

    def check(self) -> "Config":
        """Every field against RULES, then the combinations that cannot work together; before anything runs."""
        for name, rule in RULES.items():
            why = _breaks(get(self, name), rule)
            if why:
                raise UsageError(f"{name}={get(self, name)!r} is not allowed: {why}")
        d, t = self.data, self.train
        if d.source == "ale" and d.val_seed == d.seed:
            raise UsageError("data.val_seed must differ from data.seed: held-out episodes are never training episodes")
        if d.source == "ale" and d.table_steps > 0 and d.table_seed in (d.seed, d.val_seed):
            raise UsageError(f"data.table_seed={d.table_seed} must differ from data.seed and data.val_seed: the table's "
                             f"episodes are neither training nor held-out episodes (or data.table_steps=0: no table frames)")
        if d.source == "ale" and d.game != "Pong" and "tracker" in d.policy.split("+"):
            raise UsageError(f"data.policy={d.policy}: the tracker reads Pong's RAM; use data.policy=random for {d.game}")
        if d.num_workers == 0 and (d.prefetch_factor is not None or d.persistent_workers):
            raise UsageError("data.prefetch_factor and data.persistent_workers need data.num_workers > 0 "
                             "(with no workers nothing loads ahead): set data.num_workers or drop them")
        if d.source == "ale" and d.val_steps < self.model.context + self.eval.rollout_frames:
            need = self.model.context + self.eval.rollout_frames
            raise UsageError(f"data.val_steps={d.val_steps} is too short for a {self.eval.rollout_frames}-frame rollout "
                             f"after {self.model.context} context frames: use >= {need}")
        if t.cpu or t.device in ("cpu", "mps"):
            for name, bad in [("train.precision", t.precision != "fp32"), ("train.compile", t.compile),
                              ("data.pin_memory", d.pin_memory)]:
                if bad:
                    raise UsageError(f"{name} needs CUDA, but train.device={'cpu' if t.cpu else t.device}: drop it or "
                                     f"use train.device=cuda (or auto) on a GPU")
        return self

    def check_host(self) -> "Config":
        """What this machine must offer to train with this config (checked when training starts, never
        when a checkpoint is loaded: a model trained on a GPU plays on a laptop)."""
        t, dev = self.train, train_device(self)
        if not t.cpu and t.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("train.device=cuda but torch sees no CUDA device: use train.device=auto or cpu")
        if dev.type != "cuda":
            for name, bad in [("train.precision", t.precision != "fp32"), ("train.compile", t.compile),
                              ("data.pin_memory", self.data.pin_memory)]:
                if bad:
                    raise UsageError(f"{name} needs CUDA, but training runs on {dev.type}: drop it or run on a GPU")
        return self


# Allowed values of every field: ">= 1" and the like, "[a, b]" / "(a, b)" closed or open ranges,
# "multiple of 8", a tuple of choices, "text" (any string), "optional" + a rule (None or the rule).
_INT1, _POS, _NONNEG = ">= 1", "> 0", ">= 0"
RULES: dict[str, object] = {
    "data.source": "text", "data.game": "text", "data.train_steps": _INT1, "data.val_steps": _INT1,
    "data.seed": _NONNEG, "data.val_seed": _NONNEG, "data.table_steps": _NONNEG, "data.table_seed": _NONNEG, "data.policy": "policy", "data.val_fraction": "(0, 1)",
    "data.num_workers": _NONNEG, "data.prefetch_factor": "optional >= 1", "data.persistent_workers": "bool",
    "data.pin_memory": "bool",
    "model.latent_dim": f">= {NC + 1}", "model.width": "multiple of 8", "model.global_width": "multiple of 8",
    "model.gain": _POS, "model.context": ">= 2", "model.action_conditioned": "bool", "model.hidden": _INT1,
    "model.global_proj": _INT1,
    "ae.steps": _INT1, "ae.batch_size": _INT1, "ae.lr": _POS, "ae.schedule": SCHEDULES, "ae.loss": LOSSES,
    "ae.huber_delta": _POS, "ae.fg_weight": _NONNEG, "ae.bright_weight": _NONNEG, "ae.fg_threshold": "[0, 1)",
    "ae.bright_threshold": "(0, 1)", "ae.peak_weight": _NONNEG, "ae.margin_weight": _NONNEG, "ae.margin": "[0, 0.5)",
    "ae.returned_ball_weight": _NONNEG, "ae.grad_clip": _POS, "ae.coord_weight": _NONNEG,
    "ae.presence_weight": _NONNEG, "ae.band_weight": _NONNEG,
    "pred.steps": _INT1, "pred.coords": ("probe", "encoder"), "pred.batch_size": _INT1, "pred.lr": _POS, "pred.schedule": SCHEDULES, "pred.loss": LOSSES,
    "pred.huber_delta": _POS, "pred.unroll": _INT1, "pred.grad_clip": _POS, "pred.unknown_past_prob": "[0, 1]",
    "pred.ball_weight": _NONNEG, "pred.ball_delta": _POS, "pred.global_weight": _NONNEG, "pred.noise_px": _NONNEG,
    "pred.noise_global": _NONNEG, "pred.latents_on_disk_above": _NONNEG,
    "tune.steps": _NONNEG, "tune.lr": _POS, "tune.schedule": SCHEDULES,
    "optim.lr": "optional > 0", "optim.beta1": "[0, 1)", "optim.beta2": "[0, 1)", "optim.weight_decay": _NONNEG,
    "optim.warmup": "[0, 1)",
    "eval.val_every": _INT1, "eval.log_every": _INT1, "eval.val_frames": _INT1, "eval.video_frames": _INT1,
    "eval.rollout_frames": _INT1, "eval.fps": _INT1, "eval.summary_horizon": _INT1, "eval.summary_starts": _INT1,
    "train.seed": _NONNEG, "train.device": ("auto", "cpu", "cuda", "mps"), "train.cpu": "bool",
    "train.precision": ("fp32", "bf16", "fp16"), "train.compile": "bool", "train.beside": "bool",
    "experiment.name": "name", "experiment.out_dir": "path", "experiment.assets_dir": "path",
    "experiment.refresh_assets": ("default", "always", "never"),
    "experiment.wandb.mode": ("disabled", "offline", "online"), "experiment.wandb.project": "name",
    "experiment.wandb.entity": "optional text",
    "heldout.steps": _INT1, "heldout.seed": _NONNEG, "heldout.policy": "policy", "heldout.horizon": _INT1,
    "heldout.starts": _INT1, "heldout.memory": _NONNEG, "heldout.long_horizon": _INT1, "heldout.long_starts": _NONNEG,
    "heldout.dream_steps": _INT1, "heldout.dreams": _INT1, "heldout.videos": _NONNEG, "heldout.video_steps": _INT1,
    "heldout.probe_frames": _NONNEG, "heldout.batch_frames": _INT1, "heldout.ssim": "bool", "heldout.fps": _INT1,
}


# What changes a run's result; the rest (where files go, which device, loader processes) does not.
NOT_RECIPE = ("experiment", "heldout", "train.device", "train.cpu", "train.compile", "train.beside", "data.num_workers",
              "data.prefetch_factor", "data.persistent_workers", "data.pin_memory")


def recipe(cfg: Config) -> dict:
    return {n: get(cfg, n) for n in field_names() if not any(n == k or n.startswith(k + ".") for k in NOT_RECIPE)}


def get(cfg, name: str):
    for k in name.split("."):
        cfg = getattr(cfg, k)
    return cfg


def field_names(cls=None, prefix: str = "") -> list[str]:
    """Every leaf field of Config as a dotted name, in declaration order."""
    out = []
    for f in fields(cls or Config):
        t = f.default_factory if f.default_factory is not None else None   # nested sections have factories
        if t is not None and is_dataclass(t):
            out += field_names(t, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _breaks(v, rule) -> str | None:
    """What is allowed, when v breaks the rule; None when it keeps it."""
    if isinstance(rule, tuple):
        return None if v in rule else f"choose one of {', '.join(rule)}"
    if rule.startswith("optional "):
        return None if v is None else _breaks(v, rule[9:])
    if rule in ("text", "bool"):
        return None
    if rule == "path":
        return None if v.strip() else "give a folder"
    if rule == "name":
        return None if "/" not in v and "\\" not in v else "a name, without / or \\"
    if rule == "policy":
        bad = [p for p in v.split("+") if p not in POLICIES]
        return (f"choose {', '.join(POLICIES[:-1])} or {POLICIES[-1]}, or a mix such as random+tracker+sticky"
                if bad or not v else None)
    if isinstance(v, float) and not math.isfinite(v):
        return "give a finite number"
    if rule == "multiple of 8":
        return None if v >= 8 and v % 8 == 0 else "a positive multiple of 8 (GroupNorm uses 8 groups)"
    m = re.fullmatch(r"([\[(])(\S+), (\S+)([\])])", rule)
    if m:
        lo, hi = float(m[2]), float(m[3])
        ok = (lo <= v if m[1] == "[" else lo < v) and (v <= hi if m[4] == "]" else v < hi)
        return None if ok else f"must lie in {rule}"
    op, bound = rule.split()
    return None if (v >= float(bound) if op == ">=" else v > float(bound)) else f"must be {rule}"


def describe(rule) -> str:
    if isinstance(rule, tuple):
        return "one of " + ", ".join(rule)
    return {"text": "any text", "path": "a folder", "name": "a name without /", "bool": "true or false",
            "policy": f"{', '.join(POLICIES)} or a mix such as random+tracker+sticky"}.get(rule, rule)


def make_config(overrides: list[str] | None = None, yaml_path: str | None = None, base: Config | None = None) -> Config:
    """Config from defaults (or `base`), then a YAML file, then `a.b=value` overrides; typos, wrong types and
    values out of range raise UsageError."""
    try:
        cfg = OmegaConf.structured(base or Config())
        if yaml_path:
            cfg = OmegaConf.merge(cfg, read_yaml(yaml_path))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise UsageError(f"override {bad[0]!r} is not of the form key=value (e.g. ae.steps=1000)")
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        return OmegaConf.to_object(cfg).check()
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        where = f" at {key}" if key else ""
        raise UsageError(f"bad config{where}: {str(e).splitlines()[0]} (see every field: python world_model.py "
                         f"--show-config)") from None


def read_yaml(path: str | Path) -> DictConfig:
    """A YAML config file: a mapping of sections, or one line saying what is wrong with it."""
    if not Path(path).is_file():
        raise UsageError(f"config file {path} not found")
    try:
        loaded = OmegaConf.load(path)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()
        raise UsageError(f"config file {path} is not valid YAML ({' '.join(first[:1] + first[-1:])})") from None
    if not isinstance(loaded, DictConfig):
        raise UsageError(f"config file {path} holds a {type(loaded).__name__.replace('Config', '').lower()}, not a "
                         f"mapping of sections such as 'ae: {{steps: 800}}' (see python world_model.py --show-config)")
    return loaded


def show_config(cfg: Config) -> str:
    """The resolved config as YAML that --config reads back, each field with its allowed values and comment."""
    lines, comments = [], {}
    for cls in [Config, *(f.default_factory for f in fields(Config))] + [WandbConfig]:
        for m in re.finditer(r"^\s+(\w+): [^#\n]*#\s*(.*)$", inspect.getsource(cls), re.M):
            comments[(cls.__name__, m[1])] = m[2]

    def emit(obj, indent: str, prefix: str) -> None:
        for f in fields(obj):
            v = getattr(obj, f.name)
            if is_dataclass(v):
                lines.append(f"{indent}{f.name}:")
                emit(v, indent + "  ", f"{prefix}{f.name}.")
                continue
            allowed = describe(RULES[prefix + f.name])
            text = f"{indent}{f.name}: {yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            note = comments.get((type(obj).__name__, f.name), "")
            lines.append(f"{text:<40} # [{allowed}] {note}".rstrip())
    emit(cfg, "", "")
    return "\n".join(lines)


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


# A few seconds end to end: the tests and the notebook's WM_SMOKE=1 mode use it.
SMALL_BUDGET = ("data.train_steps=400", "data.val_steps=300", "data.table_steps=0", "ae.steps=40", "pred.steps=40", "tune.steps=20", "model.width=16",
                "model.hidden=64", "eval.rollout_frames=20", "eval.video_frames=20", "eval.val_every=20",
                "eval.log_every=10", "heldout.steps=600", "heldout.horizon=20", "heldout.starts=16", "heldout.long_horizon=40",
                "heldout.long_starts=2", "heldout.dream_steps=40", "heldout.dreams=2", "heldout.videos=1",
                "heldout.video_steps=40", "heldout.probe_frames=200")
