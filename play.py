"""Play Pong inside the world model's dream: a session object, a notebook widget, a desktop window.

    python world_model.py play                       # newest run's last.pt in a window (arrows, space, R, Esc)
    python world_model.py play --bench               # milliseconds per step instead of a window

    from play import PlaySession, play_widget
    s = PlaySession(WorldModel.load(path))           # s.step("Up"), s.resync(), s.render(), s.save_gif(path)
"""
from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from data import Parser, UsageError
from data.d4rl_frames import FrameData, make_env
from hardware import one_thread
from outputs import panels, save_video, which_checkpoint
from world_model import WorldModel, to_uint8

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
            raise UsageError("a recording cannot be replayed with other actions: use real=False with data=")
        self.wm, self.K = wm.eval(), wm.context
        self.has_real, self.seed, self.data, self.start = real, seed, data, start
        self.env = make_env(wm.game)  # its action meanings name the controls; it plays the real game, if any
        self.controls = _controls(self.env.unwrapped.get_action_meanings())
        if int(self.env.action_space.n) != wm.num_actions:
            raise UsageError(f"the model has {wm.num_actions} actions, {wm.game}'s emulator {self.env.action_space.n}")
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
                raise UsageError(f"frames[{s}:{s + K}] of the recording cross an episode end or run past it")
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
        with one_thread():
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
                raise UsageError(f"unknown control {a!r}; available: {', '.join(self.controls)}")
            return self.controls[a]
        if not 0 <= int(a) < self.wm.num_actions:
            raise UsageError(f"action {a} outside [0, {self.wm.num_actions})")
        return int(a)

    # -- play
    @torch.no_grad()
    def step(self, action: int | str) -> np.ndarray:
        """Dream one step with `action` (the real game, if any, takes it too): uint8 (84, 84)."""
        a = self.action(action)
        acts = torch.cat([self._past, torch.tensor([[a]], device=self.wm.device)], 1)  # (1, K): action at each latent
        with one_thread():
            self._z, frame = self.wm.dream_step(self._z, acts)
        self.frame = to_uint8(frame)[0]                                          # (84, 84)
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
        save_video(np.stack([self.render(scale, t) for t in range(self.t + 1)]), path, fps, mp4=False)
        return Path(path)


def compose(dream: np.ndarray, real: np.ndarray | None, scale: int = 3, label: str = "dream",
            resync: bool = False) -> np.ndarray:
    """uint8 (84, 84) x 2 -> uint8 (84s, 3 * 84s + 8): dream | real | |dream - real|; dream alone without real."""
    names = [label + ("  (real start)" if resync else "")]
    if real is None:
        return panels([dream], names, scale)
    diff = np.abs(dream.astype(np.int16) - real.astype(np.int16)).astype(np.uint8)
    return panels([dream, real, diff], names + ["real", "|difference|"], scale)


def _png(img: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="png", compress_level=1)  # fast; the frames are flat greys
    return buf.getvalue()


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


def main(argv: list[str]) -> int:
    """python world_model.py play [--checkpoint PATH] [--no-real] [--fps N] [--seed N] [--bench]"""
    ap = Parser(prog="world_model.py play", description="play Pong inside the world model: "
                                 "arrow keys move, space fires, R resyncs the dream with the real game, Esc quits")
    ap.add_argument("--checkpoint", help="a checkpoint (default: the newest runs/*/checkpoints/last.pt)")
    ap.add_argument("--out_dir", default="runs", help="where to look for the newest run (default: runs)")
    ap.add_argument("--no-real", action="store_true", help="the dream alone, no real game beside it")
    ap.add_argument("--fps", type=int, default=15, help="steps per second (default 15, Pong's agent rate)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the real game")
    ap.add_argument("--bench", action="store_true", help="print milliseconds per step instead of opening a window")
    args = ap.parse_args(argv)
    if args.fps < 1 or args.seed < 0:
        raise UsageError(f"--fps must be >= 1 and --seed >= 0, got {args.fps} and {args.seed}")
    ckpt = which_checkpoint(args.checkpoint, args.out_dir, "last.pt")
    if args.bench:
        print(json.dumps(bench_play(WorldModel.load(ckpt), real=not args.no_real)))
        return 0
    return play_desktop(ckpt, real=not args.no_real, fps=args.fps, seed=args.seed)
