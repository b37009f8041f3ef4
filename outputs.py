"""What a run leaves behind, and how it is found again: checkpoint files, the run folder (config,
metric CSVs, checkpoints, W&B), the loops' bookkeeping (a metrics row, a validation and a checkpoint
on schedule: end_of_step), and the pictures and videos every command draws.

    runs/<timestamp>_<name>/  resolved_config.yaml  metrics.csv  val_metrics.csv  summary.json
                              images/  videos/  assets/  checkpoints/{last,best}.pt

Nothing here knows the model: a checkpoint is a dict (world_model.WorldModel.save builds it), a picture
is uint8 frames.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from omegaconf import OmegaConf

from config import PHASES, Config, make_config
from data import MissingInput, UsageError
from hardware import rank_world

if TYPE_CHECKING:
    from world_model import WorldModel

CHECKPOINT_FORMAT = 5   # 3: the latent holds object coordinates; 4: Pong's global code only the score band's rows;
                        # 5: the predictor's turn logit

# ------------------------------------------------------------------------------------ checkpoint files


def write_checkpoint(ckpt: dict, path: str | Path) -> None:
    """torch.save to a temporary file, then rename: a checkpoint is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(ckpt, format=CHECKPOINT_FORMAT), tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's dict, loaded with weights_only=True; a missing, truncated or foreign file is a UsageError."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"checkpoint {path} not found: train one with `python world_model.py`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"checkpoint {path} is unreadable ({type(e).__name__}): is it a truncated or foreign file?") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else None
        raise UsageError(f"checkpoint {path} is not a Neural-Atari Regen checkpoint of format {CHECKPOINT_FORMAT} "
                         f"(found format {got}): retrain with this version")
    try:
        checkpoint_config(ckpt)
    except (UsageError, KeyError) as e:
        raise UsageError(f"checkpoint {path} holds a config this version cannot read ({e})") from None
    return ckpt


def checkpoint_config(ckpt: dict) -> Config:
    """The Config a checkpoint was written with, checked like any other."""
    return make_config(base=OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), ckpt["config"])))


def latest_checkpoint(out_dir: str | Path = "runs", name: str = "last.pt") -> Path:
    """The newest run's checkpoints/<name> under out_dir: the run the notebook or the CLI just finished."""
    found = sorted(Path(out_dir).glob(f"*/checkpoints/{name}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise MissingInput(f"no checkpoint under {out_dir}: train one first (python world_model.py)")
    return found[-1]


def which_checkpoint(given: str | None, out_dir: str | Path, name: str) -> Path:
    """The checkpoint a command uses (given, or the newest under out_dir), announced on the first line."""
    path = Path(given) if given else latest_checkpoint(out_dir, name)
    if not path.is_file():
        raise MissingInput(f"checkpoint {path} not found: give a runs/<run>/checkpoints/*.pt file")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
    how = "given" if given else f"the newest {name} under {out_dir}; --checkpoint picks another"
    print(f"checkpoint {path} (run {path.parent.parent.name}, written {when}; {how})", flush=True)
    return path

# ------------------------------------------------------------------------------------ run folder


class Run:
    """One run folder, laid out the same every time (drawn in the README):

    runs/<timestamp>_<name>/  resolved_config.yaml  metrics.csv  val_metrics.csv  summary.json
                              images/  videos/  checkpoints/{last,best}.pt
    """

    TRAIN_COLUMNS = ("phase", "step", "loss", "mse", "coord", "lr", "samples_per_s")
    VAL_COLUMNS = ("phase", "step", "val_loss", "recon_mse", "recon_coord", "recon_ball", "recon_player", "recon_opponent",
                   "pred_1step", "pred_1step_mse", "pred_ball", "pred_player", "pred_opponent")

    def __init__(self, cfg: Config, path: Path):
        self.cfg, self.path = cfg, Path(path)
        for sub in ("checkpoints", "images", "videos"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        self.wandb = _start_wandb(cfg, self.path)

    @classmethod
    def create(cls, cfg: Config) -> "Run":
        """A new folder runs/<timestamp>_<name>/ holding the resolved config; never reuses a folder, even when
        several processes start runs in the same second (mkdir is atomic: the loser takes the next suffix)."""
        path = new_folder(cfg.experiment.out_dir, cfg.experiment.name or cfg.data.game.lower())
        OmegaConf.save(OmegaConf.structured(cfg), path / "resolved_config.yaml")
        return cls(cfg, path)

    @classmethod
    def reopen(cls, path: str | Path) -> tuple["Run", dict]:
        """An existing run and its last checkpoint; metric rows written after that checkpoint are dropped
        (the resumed run writes them again)."""
        path = Path(path)
        cfg, ckpt = cls.resumable(path)
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

    @staticmethod
    def resumable(path: Path) -> tuple[Config, dict]:
        """A run folder's config and last checkpoint, checked to belong together; nothing is written."""
        if not (path / "resolved_config.yaml").is_file():
            raise MissingInput(f"{path} is not a run folder (no resolved_config.yaml): give runs/<timestamp>_<game>")
        cfg = make_config(yaml_path=str(path / "resolved_config.yaml"))
        ckpt = read_checkpoint(path / "checkpoints" / "last.pt")
        if "optimizer" not in ckpt:
            raise UsageError(f"{path}/checkpoints/last.pt holds no training state: it cannot be resumed")
        mismatch = _config_diff(asdict(cfg), ckpt["config"])
        if mismatch:
            raise UsageError(f"{path}/checkpoints/last.pt was written with another config ({mismatch}) than "
                             f"{path}/resolved_config.yaml: restore the file or start a new run")
        return cfg, ckpt

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
        save_video(video, gif, self.cfg.eval.fps)
        if self.wandb is not None:
            import wandb
            self._wandb_log({f"videos/{name.split('_step')[0]}": wandb.Video(str(gif), format="gif")})

    def restamp(self, wm: "WorldModel", keys: list[str]) -> None:
        """Rewrites these entries of last.pt's and best.pt's model with wm's (what loop 2 sets after its last
        checkpoint when no tuning follows: the encoder's statistics and tables), the rest as written."""
        state = wm.state_dict()
        for name in ("last.pt", "best.pt"):
            path = self.path / "checkpoints" / name
            if path.is_file():
                ckpt = read_checkpoint(path)
                ckpt["model"].update({k: state[k].detach().cpu() for k in keys})
                write_checkpoint(ckpt, path)

    def checkpoint(self, wm: "WorldModel", phase: str, step: int, opt, sched, val_loss: float, best: float) -> float:
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
        """summary.json, written last: its presence marks the run complete. Strict JSON (NaN -> null)."""
        tmp = self.path / "summary.json.tmp"
        tmp.write_text(json.dumps(json_safe(summary), indent=1, allow_nan=False))
        os.replace(tmp, self.path / "summary.json")
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
            self.wandb.finish()


def new_folder(out_dir: str | Path, name: str) -> Path:
    """out_dir/<timestamp>_<name>, made now; never an existing folder, even when several processes start in
    the same second (mkdir is atomic: the loser takes the next suffix, -2, -3, ...)."""
    base = Path(out_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}_{name}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = base if i == 1 else base.with_name(f"{base.name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UsageError(f"{base.parent} already holds 999 folders named {base.name}: use another name")


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


def json_safe(x):
    """Nested dicts and lists with NaN and infinities as None: JSON that any parser reads."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x.item() if isinstance(x, np.generic) else x


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


# ------------------------------------------------------------------------------------ the loops' bookkeeping


def end_of_step(cfg: Config, phase: str, step: int, meter: "Meter", sched, bar, run: "Run | None", validate,
                wm: "WorldModel", opt: torch.optim.Optimizer, best: float) -> float:
    """The end of a training step, the same in both loops: a metrics row every log_every steps, a
    validation (with checkpoints) every val_every steps and at the last; returns the best validation loss."""
    steps = getattr(cfg, phase).steps
    if step % cfg.eval.log_every == 0 or step == steps:
        row = meter.row(phase, step, sched)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        if run is not None:
            run.log(row)
    if (step % cfg.eval.val_every == 0 or step == steps) and rank_world()[0] == 0:   # the others go on, and wait
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
        """Every rank calls it at the same steps: the losses are averaged over the processes (equal shares
        of the global batch), the throughput summed."""
        dt = time.perf_counter() - self.t0
        keys, world = sorted(self.sums), rank_world()[1]
        v = torch.tensor([float(self.sums[k]) / self.n for k in keys] + [float(self.samples)], dtype=torch.float64)
        if world > 1:
            torch.distributed.all_reduce(v)
            v[:-1] /= world
        row = {"phase": phase, "step": step, **dict(zip(keys, v[:-1].tolist())),
               "lr": sched.get_last_lr()[0], "samples_per_s": v[-1].item() / max(dt, 1e-9)}
        self.__init__()
        return row


def restore(ckpt: dict, phase: str, wm: "WorldModel", opt, sched) -> int:
    """Load model, optimizer, scheduler and RNG states from a training checkpoint; returns its step."""
    wm.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    return int(ckpt["step"])


def _die_at(phase: str, step: int) -> None:
    """Crash-test hook: WM_DIE_AT=ae:30 kills the process (SIGKILL, no clean-up) after that step;
    WM_DIE_AT=ae:30@1 only rank 1 of a torchrun."""
    if os.environ.get("WM_DIE_AT") in (f"{phase}:{step}", f"{phase}:{step}@{rank_world()[0]}"):
        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------ pictures


def evenly(n: int, k: int) -> np.ndarray:
    """Up to k indices spread evenly over range(n), first and last included, none repeated."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(np.int64)) if n > 0 else np.zeros(0, np.int64)


def upscale(frames: np.ndarray, s: int = 3) -> np.ndarray:
    return frames.repeat(s, -2).repeat(s, -1)


def panels(columns: list[np.ndarray], labels: list[str] | None = None, s: int = 3) -> np.ndarray:
    """Frames side by side, upscaled s times, 4-px white gaps: every picture and video of the project.

    Each column is uint8 (..., 84, 84) with the same leading shape (a frame, or a video (T, 84, 84))
    -> uint8 (..., 84s, n * (84s + 4) - 4). Labels go at each panel's top left; in a video '{t}' in
    a label becomes the frame's number from 1.
    """
    cols = [upscale(np.asarray(c), s) for c in columns]
    gap = np.full(cols[0].shape[:-1] + (4,), 255, np.uint8)
    img = np.concatenate([x for c in cols for x in (c, gap)][:-1], -1)
    if labels:
        from PIL import Image, ImageDraw
        flat = img.reshape(-1, *img.shape[-2:])                                  # (T, 84s, W)
        for t in range(len(flat)):
            im = Image.fromarray(flat[t])
            draw = ImageDraw.Draw(im)
            for j, label in enumerate(labels):
                draw.text((j * (84 * s + 4) + 4, 2), label.replace("{t}", str(t + 1)), fill=255)
            flat[t] = np.asarray(im)
    return img


def strip(top: np.ndarray, bottom: np.ndarray, s: int = 3) -> np.ndarray:
    """uint8 (N, 84, 84) x 2 -> one image: `top` frames in a row above `bottom`, 4-px white gap."""
    a, b = panels(list(top), s=s), panels(list(bottom), s=s)
    return np.concatenate([a, np.full((4, a.shape[1]), 255, np.uint8), b])


def save_video(video: np.ndarray, path: str | Path, fps: int, mp4: bool = True) -> list[str]:
    """uint8 (T, H, W) -> a GIF at `path`, and beside it an MP4 when `mp4` and imageio-ffmpeg is
    installed (optional; padded white to 16-px blocks for H.264). Returns the names written."""
    import imageio.v3 as iio
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, video, extension=".gif", duration=1000.0 / fps, loop=0)
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        mp4 = False
    if not mp4:
        return [path.name]
    h, w = video.shape[1:3]
    padded = np.pad(video, ((0, 0), (0, -h % 16), (0, -w % 16)), constant_values=255)
    iio.imwrite(path.with_suffix(".mp4"), padded, extension=".mp4", fps=fps, codec="libx264", plugin="FFMPEG")
    return [path.name, path.with_suffix(".mp4").name]
