"""Frame sources: where the world model's (frame, action, episode) streams come from.

Every source yields a FrameData (frames uint8 (N, 84, 84) stored once, actions, episode ids),
chosen by one string with load_source(spec):
  * a folder recorded by this module (manifest.json with "format": "neural-atari-regen/frames");
  * a folder in the predecessor's layout (manifest.json with game, steps, total and shards of
    shard_*_{obs,next_obs,action,done}.npy), read as it is: frames are obs[:, -1] plus each
    episode's final next_obs;
  * "d4rl:<id>" such as d4rl:pong-mixed-v4: d4rl-atari's files (the DQN Replay Dataset's).
The embedded default, record(), plays ALE in memory. Preprocessing is DQN's, the same as
d4rl-atari's, so frames from every source are interchangeable: ALE v5 with frameskip=1 and sticky
actions off, wrapped in AtariPreprocessing(frame_skip=4, screen_size=84, grayscale_obs=True, noop_max=30).

Our on-disk format (version 1): one folder, manifest.json plus, per shard, one .npy per field
named shard_w<worker>_<chunk>_<field>.npy: frames uint8 (n, 84, 84), actions uint8 (n,),
rewards float32, terminated and truncated bool, episode int64 (index within the worker's
stream), ram uint8 (n, 128): ~7.2 KB a step. A shard is a run of one worker's stream, so
streams never interleave; loading orders shards by (worker, chunk) and numbers episodes
0, 1, ... The manifest gives format and version, game, env id and preprocessing, policy, seed,
num_envs, counts (steps, episodes), whether recording completed, and per shard its worker,
chunk, rows and for each file its name, bytes and sha256. It is rewritten atomically after every
shard, so an interrupted recording lists only complete shards; shard files it does not list are
an interrupted recording's leftovers, which a load ignores (one line says so). Frames are read
from disk on demand (DiskFrames in data/formats.py); RSS does not grow with the dataset.

    python -m data.d4rl_frames --game Pong --steps 300000 --out_dir data/pong --policy tracker

    from data.d4rl_frames import load_source, record, split_episodes
    train = record("Pong", steps=5000, seed=0)                  # in memory, one environment
    train, val = split_episodes(load_source("data/pong", game="Pong"), val_fraction=0.1)
"""
from __future__ import annotations

import argparse
import ctypes
import difflib
import functools
import multiprocessing as mp
import os
import queue as queue_mod
import re
import signal
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from data import MissingInput, Parser, UsageError, peak_rss_mb
from data.formats import (CHECKSUM, FIELDS, FORMAT, FRAME_SHAPE, VERSION, DiskFrames, read_d4rl, read_manifest,
                          read_predecessor, read_shards, write_json, write_shard)

PREPROCESSING = dict(frame_skip=4, screen_size=84, grayscale_obs=True, noop_max=30)
# AtariPreprocessing does the frame skipping and reads the screen itself, discarding the inner env's
# observation: grayscale is the cheapest one it accepts (~8 % faster than RGB, identical frames).
ENV_SETTINGS = dict(frameskip=1, repeat_action_probability=0.0, obs_type="grayscale")


@dataclass
class FrameData:
    """One recording: frames stored once, in time order, episodes back to back.

    actions[t] is the ALE action taken at frames[t]; it produced frames[t + 1] when
    episode[t + 1] == episode[t]. The last frame of an episode has no successor (its action is 0
    in our recordings). frames is an ndarray, or DiskFrames when read from disk (same indexing,
    returns in-memory arrays). rewards[t] came with frames[t + 1]; terminated/truncated mark an
    episode's last frame; each is None where a source does not store it.
    """
    frames: np.ndarray | DiskFrames  # uint8 (N, 84, 84)
    actions: np.ndarray   # int64 (N,)
    episode: np.ndarray   # int64 (N,) episode id of each frame, non-decreasing
    ram: np.ndarray | None  # uint8 (N, 128) emulator RAM at each frame (object labels), or None
    game: str
    num_actions: int
    rewards: np.ndarray | None = None     # float32 (N,)
    terminated: np.ndarray | None = None  # bool (N,) the game ended the episode at this frame
    truncated: np.ndarray | None = None   # bool (N,) a time limit ended it here

    def __post_init__(self) -> None:
        # Checked once at the door: everything downstream trusts these. Frames: dtype and shape only,
        # never their pixels (a dataset on disk may hold gigabytes).
        n = len(self.frames)
        if self.frames.dtype != np.uint8 or tuple(self.frames.shape[1:]) != FRAME_SHAPE:
            raise UsageError(f"frames must be uint8 (N, 84, 84), got {self.frames.dtype} {self.frames.shape}")
        if n == 0:
            raise UsageError("empty dataset: no frames")
        if self.actions.shape != (n,) or self.episode.shape != (n,):
            raise UsageError(f"actions {self.actions.shape} and episode {self.episode.shape} must be ({n},)")
        if self.actions.min() < 0 or self.actions.max() >= self.num_actions:
            raise UsageError(f"actions must lie in [0, {self.num_actions}), got [{self.actions.min()}, {self.actions.max()}]")
        if np.any(np.diff(self.episode) < 0):
            raise UsageError("episode ids must be non-decreasing (episodes stored back to back)")
        if self.ram is not None and self.ram.shape != (n, 128):
            raise UsageError(f"ram must be uint8 ({n}, 128), got {self.ram.shape}")
        for name in ("rewards", "terminated", "truncated"):
            if getattr(self, name) is not None and getattr(self, name).shape != (n,):
                raise UsageError(f"{name} must be ({n},), got {getattr(self, name).shape}")

    def __len__(self) -> int:
        return len(self.frames)

    def starts(self, length: int) -> np.ndarray:
        """Indices t such that frames[t : t + length] lie in one episode (no boundary crossed)."""
        if length > len(self):
            return np.zeros(0, dtype=np.int64)
        ep = self.episode
        return np.flatnonzero(ep[: len(ep) - length + 1] == ep[length - 1:]).astype(np.int64)

    def episode_slices(self) -> list[slice]:
        cut = np.flatnonzero(np.diff(self.episode)) + 1
        edges = [0, *cut.tolist(), len(self)]
        return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def split_episodes(data: FrameData, val_fraction: float) -> tuple[FrameData, FrameData]:
    """Train/validation split by whole episodes: the last episodes, about val_fraction of the
    frames, become validation. Neighbouring frames are near duplicates, so a split by transitions
    would leak. Both halves are slices: frames on disk stay on disk. Episode ids are kept, so the
    two halves' ids are disjoint (count episodes with len(d.episode_slices()), not episode[-1] + 1).
    """
    if not 0 < val_fraction < 1:
        raise UsageError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    edges = np.array([s.start for s in data.episode_slices()[1:]])  # where an episode begins
    if len(edges) == 0:
        raise UsageError(f"cannot split by whole episodes: the dataset holds a single episode ({len(data)} frames); "
                         f"record more steps or give validation its own source")
    cut = int(edges[np.argmin(np.abs(edges - (1 - val_fraction) * len(data)))])
    return _rows(data, 0, cut), _rows(data, cut, len(data))


def concat(parts: list[FrameData]) -> FrameData:
    """In-memory recordings of one game back to back, episode ids renumbered so none is shared."""
    offsets = np.cumsum([0] + [int(p.episode.max()) + 1 for p in parts[:-1]])
    opt = {k: None if any(getattr(p, k) is None for p in parts) else np.concatenate([getattr(p, k) for p in parts])
           for k in ("ram", "rewards", "terminated", "truncated")}
    return FrameData(np.concatenate([np.asarray(p.frames) for p in parts]), np.concatenate([p.actions for p in parts]),
                     np.concatenate([p.episode + o for p, o in zip(parts, offsets)]), game=parts[0].game,
                     num_actions=parts[0].num_actions, **opt)


def _rows(d: FrameData, a: int, b: int) -> FrameData:
    frames = d.frames.sub(a, b) if isinstance(d.frames, DiskFrames) else d.frames[a:b]
    opt = {k: None if getattr(d, k) is None else getattr(d, k)[a:b] for k in ("ram", "rewards", "terminated", "truncated")}
    return FrameData(frames, d.actions[a:b], d.episode[a:b], game=d.game, num_actions=d.num_actions, **opt)

# ------------------------------------------------------------------------------------ ALE (the embedded default)


@functools.cache
def _ale_games() -> tuple[str, ...]:
    import ale_py
    import gymnasium as gym
    gym.register_envs(ale_py)
    return tuple(sorted(k[4:-3] for k in gym.registry if k.startswith("ALE/") and k.endswith("-v5")))


def ale_env_id(game: str) -> str:
    """'Pong' -> 'ALE/Pong-v5'; an unknown game gets an error naming close matches."""
    games = _ale_games()
    if game not in games:
        close = difflib.get_close_matches(game, games, n=3, cutoff=0.5) or games[:5]
        raise UsageError(f"unknown Atari game {game!r}; close matches: {', '.join(close)} "
                         f"(names as in ALE/<Game>-v5)")
    return f"ALE/{game}-v5"


def make_env(game: str = "Pong", inner=None):
    """One ALE environment with DQN preprocessing: observations uint8 (84, 84). `inner` (optional)
    wraps the emulator below the frame skip, where it sees every raw frame (data.probe's RAM log)."""
    import gymnasium as gym
    env = gym.make(ale_env_id(game), **ENV_SETTINGS)
    return gym.wrappers.AtariPreprocessing(inner(env) if inner else env, **PREPROCESSING)


@functools.cache
def num_actions_of(game: str) -> int:
    """Size of the game's ALE action set (the minimal one, as in v5 and d4rl-atari): Pong 6, Breakout 4."""
    import gymnasium as gym
    env = gym.make(ale_env_id(game))
    n = int(env.action_space.n)
    env.close()
    return n


def canonical_game(name: str) -> str:
    """'Pong', 'pong', 'ALE/Pong-v5', 'PongNoFrameskip-v4', 'space-invaders' -> the ALE name."""
    base = re.sub(r"(NoFrameskip|Deterministic)?-v\d+$", "", name.removeprefix("ALE/"))
    folded = {g.lower(): g for g in _ale_games()}
    return folded.get(base.replace("-", "").replace("_", "").lower(), base)

# ------------------------------------------------------------------------------------ policies

TRACKER_EPS = 0.1    # share of uniformly random actions: every action appears, rallies still last


POLICIES = ("random", "sticky", "tracker")   # make_policy's names; a run's data.policy may mix them with +


def make_policy(name: str, game: str, num_actions: int):
    """policy(rng, ram) -> action. 'random': uniform. 'sticky': uniform actions, each held a random
    number of steps (mean STICKY_HOLD). 'tracker' (Pong): moves the player's paddle toward the ball
    using the RAM, with TRACKER_EPS random actions, so the ball gets hit back."""
    if name == "random":
        return lambda rng, ram: int(rng.integers(num_actions))
    if name == "sticky":
        return _Sticky(num_actions)
    if name == "tracker":
        if game != "Pong":
            raise UsageError(f"policy 'tracker' reads Pong's RAM and plays only Pong; use policy 'random' for {game}")
        from data.probe import RAM  # Pong's facts live in the probe (imported here: it imports this module)
        return functools.partial(_track_ball, RAM)
    raise UsageError(f"unknown policy {name!r}; available: {', '.join(POLICIES)} (tracker: Pong only)")


STICKY_HOLD = 8      # sticky play: mean number of steps a random action is held (geometric)


class _Sticky:
    """Random actions, each held for a geometric number of steps (mean STICKY_HOLD): the paddle crosses
    the field and rests against the walls with the button held, which uniform random play (a new
    action every step) almost never shows: 21 of 10,000 random+tracker frames had the player at the
    top wall after 4 steps of UP."""

    def __init__(self, num_actions: int):
        self.num_actions, self.action, self.left = num_actions, 0, 0

    def __call__(self, rng: np.random.Generator, ram: np.ndarray) -> int:
        if self.left <= 0:
            self.action, self.left = int(rng.integers(self.num_actions)), int(rng.geometric(1 / STICKY_HOLD))
        self.left -= 1
        return self.action


def _track_ball(index: dict[str, int], rng: np.random.Generator, ram: np.ndarray) -> int:
    if rng.random() < TRACKER_EPS:
        return int(rng.integers(6))
    ball_y, paddle_y = int(ram[index["ball_y"]]), int(ram[index["player_y"]])
    if ball_y == 0:            # no ball in play (between points)
        return 0
    # Measured: the paddle's centre is level with the ball when paddle_y == ball_y - 7 (RAM units,
    # ~0.4 pixel each). A dead band of 8 stops the paddle (~20 units a step) from oscillating.
    gap = paddle_y - (ball_y - 7)
    return 2 if gap > 8 else 3 if gap < -8 else 0   # RIGHT (2) moves the paddle up, LEFT (3) down


def rally_stats(data: FrameData) -> dict:
    """Pong: how often the player returns the ball. Returns: the ball's x (RAM) turns back from
    the player's side (x >= 180; the player's paddle turns it at ~188-192)."""
    from data.probe import RAM
    x = data.ram[:, RAM["ball_x"]].astype(int)
    dx = np.diff(x)
    returns = int(np.sum((dx[:-1] > 0) & (dx[1:] < 0) & (x[1:-1] >= 180)))
    points = int(np.sum(data.rewards != 0))
    return dict(steps=len(data), points=points, won=int(np.sum(data.rewards > 0)), returns=returns,
                steps_per_point=len(data) / max(points, 1), returns_per_point=returns / max(points, 1))

# ------------------------------------------------------------------------------------ recording


class _Stream:
    """One environment playing a policy from a seed: frames, episodes back to back, forever."""

    def __init__(self, game: str, seed: int, policy: str):
        self.env = make_env(game)
        self.num_actions = int(self.env.action_space.n)
        self.act = make_policy(policy, game, self.num_actions)
        self.ale, self.rng = self.env.unwrapped.ale, np.random.default_rng(seed)
        self.obs, _ = self.env.reset(seed=seed)
        self.ep, self.done, self.term, self.trunc = 0, False, False, False

    def fill(self, out: dict[str, np.ndarray], a: int, b: int) -> None:
        """Rows a..b-1 of the FIELDS arrays in `out`."""
        for t in range(a, b):
            ram = self.ale.getRAM()
            out["frames"][t], out["ram"][t], out["episode"][t] = self.obs, ram, self.ep
            if self.done:  # frames[t] was its episode's last frame (action 0): open the next episode
                out["actions"][t], out["rewards"][t] = 0, 0.0
                out["terminated"][t], out["truncated"][t] = self.term, self.trunc
                self.obs, _ = self.env.reset()
                self.ep, self.done = self.ep + 1, False
                continue
            action = self.act(self.rng, ram)
            self.obs, reward, self.term, self.trunc, _ = self.env.step(action)
            out["actions"][t], out["rewards"][t] = action, reward
            out["terminated"][t] = out["truncated"][t] = False
            self.done = self.term or self.trunc


def _buffers(n: int, actions_dtype=np.uint8) -> dict[str, np.ndarray]:
    out = {k: np.zeros((n, *row), dtype) for k, (dtype, row) in FIELDS.items()}
    out["actions"] = np.zeros(n, actions_dtype)
    return out


def record(game: str = "Pong", steps: int = 5000, seed: int = 0, policy: str = "random", workers: int = 1) -> FrameData:
    """Play `steps` agent steps (frames) of `game` with `policy`, seeded, in one environment, in memory.
    A mix such as 'random+tracker' plays an equal share of the steps with each policy, same seed, each in
    its own environment (a part); `workers` > 1 plays the parts in that many processes at once (record_sets:
    the same frames)."""
    return record_sets([(game, steps, seed, policy)], workers)[0]


def _parts(game: str, steps: int, seed: int, policy: str) -> list[tuple[str, int, int, str]]:
    names = policy.split("+")
    return [(game, steps // len(names) + (i < steps % len(names)), seed, p) for i, p in enumerate(names)]


def _record_part(game: str, steps: int, seed: int, policy: str) -> FrameData:
    stream = _Stream(game, seed, policy)
    buf = _buffers(steps, np.int64)
    stream.fill(buf, 0, steps)
    stream.env.close()
    return FrameData(buf["frames"], buf["actions"], buf["episode"], buf["ram"], game, stream.num_actions,
                     buf["rewards"], buf["terminated"], buf["truncated"])


def record_sets(sets: list[tuple[str, int, int, str]], workers: int | None = None) -> list[FrameData]:
    """Several recordings, each exactly record(game, steps, seed, policy), their parts (one per policy of a
    mix) shared out over `workers` processes (None: one per CPU core), the largest share played here, the
    others each in a fresh interpreter importing this module (not a copy of this process: its thread pools
    stay here). On 2 cores the default run's 10,000 + 1,000 frames of three policies take ~7 s, not ~12."""
    jobs = _jobs(sets)
    flat = [p for ps in jobs for p in ps]
    n = max(1, min(workers or os.cpu_count() or 1, len(flat)))
    loads, share = [0] * n, [[] for _ in range(n)]
    for i in sorted(range(len(flat)), key=lambda i: -flat[i][1]):   # longest first, to the least loaded
        w = loads.index(min(loads))
        share[w].append(i)
        loads[w] += flat[i][1]
    out: list[FrameData | None] = [None] * len(flat)
    helpers = []
    try:
        for s in (s for s in share[1:] if s):
            helpers.append((FreshProcess("data.d4rl_frames", "_helper", quiet=True), s))
            helpers[-1][0].send([flat[i] for i in s])
        for i in share[0]:
            out[i] = _record_part(*flat[i])
        for h, s in helpers:
            for i, d in zip(s, _recorded(h)):
                out[i] = d
    finally:
        for h, _ in helpers:
            h.stop()
    return _regroup(jobs, out)


def _jobs(sets: list[tuple[str, int, int, str]]) -> list[list[tuple[str, int, int, str]]]:
    """Each recording's parts (one per policy of a mix), every policy checked: a wrong name is one line, before any
    process starts."""
    jobs = [_parts(*s) for s in sets]
    for game, _, _, policy in (p for ps in jobs for p in ps):
        make_policy(policy, game, num_actions_of(game))
    return jobs


def _regroup(jobs: list[list], out: list[FrameData]) -> list[FrameData]:
    """The recorded parts, in order, back into one FrameData per recording."""
    ends = np.cumsum([0] + [len(ps) for ps in jobs])
    return [out[a] if b - a == 1 else concat(out[a:b]) for a, b in zip(ends[:-1], ends[1:])]


class Recording:
    """record_sets(sets) in one process of its own, started now at the lowest CPU priority (nice 19), for frames
    needed later: it runs where training leaves a core idle. result() waits for it and returns the recordings;
    stop() ends it."""

    def __init__(self, sets: list[tuple[str, int, int, str]]):
        self.jobs, self.peak_rss_mb = _jobs(sets), float("nan")
        self.child = FreshProcess("data.d4rl_frames", "_helper", quiet=True)
        try:
            if hasattr(os, "setpriority"):
                os.setpriority(os.PRIO_PROCESS, self.child.proc.pid, 19)
            self.child.send([p for ps in self.jobs for p in ps])
        except BaseException:
            self.child.stop()
            raise

    def result(self) -> list[FrameData]:
        """The recordings (it waits for them); peak_rss_mb is then the recording process's peak memory."""
        try:
            out = _recorded(self.child)
            self.peak_rss_mb = float((self.child.dir / "peak_rss_mb.txt").read_text())
        finally:
            self.child.stop()
        return _regroup(self.jobs, out)

    def stop(self) -> None:
        self.child.stop()


def _recorded(child: "FreshProcess") -> list[FrameData]:
    """What a _helper process recorded (it has ended)."""
    import pickle
    rc = child.wait()
    if rc != 0:
        raise RuntimeError(f"a recording process ended with exit code {rc}: {child.last_line() or 'no message'}")
    with open(child.dir / "out.pkl", "rb") as fh:
        return pickle.load(fh)


def _helper() -> None:
    """A FreshProcess of record_sets: the parts on stdin, the recordings to out.pkl."""
    import pickle
    folder = child_folder()
    out = [_record_part(*p) for p in pickle.load(sys.stdin.buffer)]
    (folder / "peak_rss_mb.txt").write_text(f"{peak_rss_mb():.1f}")
    with open(folder / "out.tmp", "wb") as fh:
        pickle.dump(out, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(folder / "out.tmp", folder / "out.pkl")


def stream_seed(seed: int, worker: int) -> int:
    """Seed of worker `worker`'s stream: record(game, n, stream_seed(seed, w)) replays it exactly."""
    return int(np.random.SeedSequence([seed, worker]).generate_state(1)[0])


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> None:
    """A child process: die with the parent however it dies, kill -9 included (Linux; it signals when the
    thread that started this process ends). Elsewhere the child checks os.getppid() itself."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class FreshProcess:
    """A fresh Python that imports `module` and calls its `function` (not a multiprocessing child: 'spawn'
    re-runs the caller's script, which breaks any script without an `if __name__ == "__main__":` guard, and
    'fork' copies this process's thread pools). Its folder (sys.argv[1] there; `dir` here) takes its result;
    send() pickles its inputs to its stdin; with `quiet`, what it prints goes to the folder's log.txt.
    stop() kills it if it still runs and removes the folder. The folder's name holds this process's id: a
    process killed outright (SIGKILL, out of memory) cannot remove its folder, so each new one first removes
    the folders of its kind whose process is gone."""

    def __init__(self, module: str, function: str, quiet: bool = False):
        import subprocess
        import tempfile
        name = function.strip("_")
        sweep_dead(Path(tempfile.gettempdir()), name)
        self.dir, self.proc = Path(tempfile.mkdtemp(prefix=f"{name}-{os.getpid()}-")), None
        self.log = open(self.dir / "log.txt", "wb") if quiet else None
        root = str(Path(__file__).resolve().parents[1])
        code = f"import sys; sys.path.insert(0, {root!r}); from {module} import {function}; {function}()"
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", code, str(self.dir)], stdin=subprocess.PIPE,
                                         stdout=self.log, stderr=self.log)
        except BaseException:
            self.stop()
            raise

    def send(self, inputs) -> None:
        import pickle
        pickle.dump(inputs, self.proc.stdin)
        self.proc.stdin.close()

    def wait(self) -> int:
        return self.proc.wait()

    def last_line(self) -> str:
        """The last line it printed (quiet only)."""
        if self.log is None:
            return ""
        self.log.flush()
        lines = (self.dir / "log.txt").read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    def stop(self) -> None:
        import shutil
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        if self.log is not None:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def sweep_dead(tmp: Path, name: str) -> list[Path]:
    """Remove the folders `name`-PID-* in `tmp` whose process PID no longer runs; returns them."""
    import shutil
    gone = []
    for d in tmp.glob(f"{name}-*-*"):
        pid = d.name[len(name) + 1:].split("-")[0]
        if not pid.isdigit() or not d.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
        except OSError:     # another user's process: alive
            pass
    return gone


def child_folder() -> Path:
    """In a FreshProcess: Ctrl-C is the main process's (it stops this one), die with it; the folder."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    return Path(sys.argv[1])


def _record_worker(game, steps, seed, policy, worker, shard_steps, out_dir, queue, stop, parent) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it sets `stop`
    die_with_parent()   # (record_dataset's thread started it, and waits for the workers)
    try:
        stream, buf = _Stream(game, stream_seed(seed, worker), policy), _buffers(min(shard_steps, steps))
        done = rows = chunk = 0
        while done < steps:
            if os.getppid() != parent:  # the parent died before prctl took effect, or there is no prctl (macOS)
                os._exit(1)
            b = min(rows + 500, shard_steps, rows + steps - done)
            stream.fill(buf, rows, b)
            queue.put(("progress", b - rows))
            done, rows = done + b - rows, b
            if rows == shard_steps or done == steps or stop.is_set():  # on stop: keep what we hold
                queue.put(("shard", write_shard(Path(out_dir), worker, chunk, {k: v[:rows] for k, v in buf.items()})))
                rows, chunk = 0, chunk + 1
                if stop.is_set():
                    break
        queue.put(("done", worker))
    except BaseException:
        queue.put(("error", traceback.format_exc()))


def record_dataset(game: str, steps: int, out_dir: str | Path, seed: int = 0, policy: str = "random",
                   num_envs: int = 2, shard_steps: int = 10_000, progress: bool = True) -> Path:
    """Record `steps` agent steps into `out_dir` with `num_envs` environments in parallel processes.

    Worker w plays its own stream (seed stream_seed(seed, w), steps / num_envs of them) and writes
    it in shards of `shard_steps` rows; the manifest is rewritten after every shard. Ctrl-C makes
    the workers write what they hold as a last shard; then KeyboardInterrupt is raised, and the
    folder holds a valid dataset of the shards listed ("complete": false). Workers die with this
    process, kill -9 included. They are spawned (fresh interpreters), so a script calling this
    needs the usual `if __name__ == "__main__":`.
    """
    # Every check comes before anything is created, and before ALE prints its banner (num_actions_of).
    for name, value, low in (("steps", steps, 1), ("num_envs", num_envs, 1), ("shard_steps", shard_steps, 1),
                             ("seed", seed, 0)):
        if value < low:
            raise UsageError(f"{name} must be >= {low}, got {value}")
    out = Path(out_dir)
    there = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not there.is_dir():
        raise UsageError(f"{there} is a file: the output must be a folder (new or empty)")
    if there == out and any(out.iterdir()):
        raise UsageError(f"{out} is not empty: record into a new folder (datasets are never appended to)")
    ale_env_id(game)
    make_policy(policy, game, 1)
    num_actions = num_actions_of(game)
    num_envs = min(num_envs, steps)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {out}: {e.strerror}") from None
    manifest = dict(format=FORMAT, version=VERSION, game=game, env_id=ale_env_id(game), num_actions=num_actions,
                    preprocessing={**PREPROCESSING, **ENV_SETTINGS}, policy=policy, seed=seed, num_envs=num_envs,
                    shard_steps=shard_steps, requested_steps=steps, complete=False, checksum=CHECKSUM,
                    fields={k: {"dtype": d, "row_shape": list(r)} for k, (d, r) in FIELDS.items()},
                    counts=dict(steps=0, episodes=0), shards=[])
    write_json(out / "manifest.json", manifest)
    ctx = mp.get_context("spawn")  # a fresh interpreter: safe whatever threads the caller (torch) runs
    queue, stop = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_record_worker, daemon=True,
                         args=(game, steps // num_envs + (w < steps % num_envs), seed, policy, w, shard_steps,
                               str(out), queue, stop, os.getpid())) for w in range(num_envs)]
    in_main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None  # children start ignoring Ctrl-C
    try:
        for p in procs:
            p.start()
    finally:
        if in_main:
            signal.signal(signal.SIGINT, old)
    bar = tqdm(total=steps, unit="step", desc=f"recording {game}", disable=not progress, smoothing=0.1)
    running = set(range(num_envs))
    try:
        try:
            _collect(queue, procs, running, manifest, out, bar)
        except KeyboardInterrupt:
            stop.set()
            _collect(queue, procs, running, manifest, out, bar)   # the workers' last shards
            raise KeyboardInterrupt(f"recording interrupted: {out} keeps {manifest['counts']['steps']} steps in "
                                    f"{len(manifest['shards'])} complete shards") from None
        manifest["complete"] = True
        write_json(out / "manifest.json", manifest)
    finally:
        stop.set()
        bar.close()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    return out


def _collect(queue, procs, running: set, manifest: dict, out: Path, bar) -> None:
    """Take the workers' messages until all are done; list each finished shard in the manifest."""
    silent = 0
    while running:
        try:
            kind, payload = queue.get(timeout=1.0)
        except queue_mod.Empty:
            silent += 1
            if silent > 2 and any(procs[w].exitcode is not None for w in running):
                raise RuntimeError(f"a recording worker exited without finishing (exit codes "
                                   f"{[p.exitcode for p in procs]})") from None
            continue
        silent = 0
        if kind == "progress":
            bar.update(payload)
        elif kind == "shard":
            manifest["shards"].append(payload)
            last = {}
            for s in manifest["shards"]:  # episodes: per worker, local ids run 0..last
                last[s["worker"]] = max(last.get(s["worker"], 0), s["episodes"][1])
            manifest["counts"] = dict(steps=sum(s["rows"] for s in manifest["shards"]),
                                      episodes=sum(v + 1 for v in last.values()))
            write_json(out / "manifest.json", manifest)
        elif kind == "done":
            running.discard(payload)
        else:
            raise RuntimeError(f"a recording worker failed:\n{payload}")

# ------------------------------------------------------------------------------------ reading datasets


def load_source(spec: str, game: str | None = None, num_actions: int | None = None,
                verify: bool = True) -> FrameData:
    """A FrameData from one string: a folder with our manifest.json, a predecessor-layout folder,
    or "d4rl:<id>". `game` / `num_actions`: what the model expects; a dataset of another game or
    action set is an error naming both. verify: check every file's sha256 (our format; ~1 s/GB)."""
    if spec.startswith("d4rl:"):
        data = load_d4rl(spec.removeprefix("d4rl:"))
    else:
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise MissingInput(f"no dataset folder at {folder}: data.source takes a folder holding manifest.json "
                                    f"(recorded with `python -m data.d4rl_frames`, or the predecessor's layout) or "
                                    f"d4rl:<id> such as d4rl:pong-mixed-v4")
        manifest = read_manifest(folder)
        if manifest.get("format") == FORMAT:
            listed = {f["file"] for s in manifest.get("shards", []) for f in s["files"].values()}
            if stray := [p for p in folder.glob("*shard_w*.npy") if p.name not in listed]:
                print(f"{folder}: ignoring {len(stray)} shard files its manifest does not list (leftovers of an "
                      f"interrupted recording: they can be deleted)", file=sys.stderr)
            name = canonical_game(manifest["game"])
            frames, a = read_shards(folder, manifest, verify)
            data = FrameData(frames, a["actions"].astype(np.int64), a["episode"], a["ram"], name,
                             manifest.get("num_actions") or num_actions_of(name), a["rewards"], a["terminated"],
                             a["truncated"])
        elif {"game", "total", "shards"} <= manifest.keys():  # the predecessor's layout
            name = canonical_game(str(manifest["game"]))
            frames, a = read_predecessor(folder, manifest)
            data = FrameData(frames, a["actions"], a["episode"], None, name, num_actions_of(name),
                             terminated=a["terminated"])
        else:
            raise UsageError(f"{folder / 'manifest.json'} is neither ours (format {FORMAT!r}) nor the predecessor's "
                             f"(keys game, steps, total, shards); its keys: {sorted(manifest)}")
    if game is not None and canonical_game(game) != data.game:
        raise UsageError(f"{spec} holds {data.game} ({data.num_actions} actions) but {game} "
                         f"({num_actions_of(canonical_game(game))} actions) is expected: a model fits one game and "
                         f"its action set; choose a {game} dataset, or train on this one with data.game={data.game}")
    if num_actions is not None and num_actions != data.num_actions:
        raise UsageError(f"{spec} holds {data.game} with {data.num_actions} actions but the model has {num_actions}")
    return data


D4RL_CHECKPOINTS = {"mixed": 1, "medium": 10, "expert": 50}  # d4rl-atari's registry: run = v + 1


def d4rl_location(name: str) -> tuple[str, Path, int]:
    """'pong-mixed-v4' -> ('Pong', <datasets>/Pong/5/1, checkpoint 1), as d4rl-atari lays files out."""
    m = re.fullmatch(r"([a-z][a-z0-9-]*?)-(mixed|medium|expert|epoch-(\d+))-v(\d+)", name)
    if not m:
        raise UsageError(f"d4rl id {name!r} not understood: use <game>-{{mixed,medium,expert}}-v<0-4> or "
                         f"<game>-epoch-<N>-v<0-4>, e.g. d4rl:pong-mixed-v4")
    game = "".join(part.capitalize() for part in m[1].split("-"))
    ale_env_id(game)
    checkpoint = D4RL_CHECKPOINTS.get(m[2]) or int(m[3])
    try:   # the package's own base folder (it reads D4RL_DATASET_DIR too) when it is installed
        from d4rl_atari.offline_env import BASE_DIR as base
    except ImportError:
        base = os.environ.get("D4RL_DATASET_DIR") or "~/.d4rl/datasets"
    return game, Path(base).expanduser() / game / str(int(m[4]) + 1) / str(checkpoint), checkpoint


def load_d4rl(name: str) -> FrameData:
    """d4rl-atari files for an id such as pong-mixed-v4, read directly (see formats.read_d4rl)."""
    game, where, checkpoint = d4rl_location(name)
    frames, a = read_d4rl(where, checkpoint)
    return FrameData(frames, a["actions"], a["episode"], None, game, num_actions_of(game), a["rewards"], a["terminated"])


# ------------------------------------------------------------------------------------ command line


def main(argv: list[str] | None = None) -> None:
    ap = Parser(description="Record an Atari dataset of frames, actions and RAM into shards.",
                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--game", default="Pong", help="ALE game, as in ALE/<Game>-v5")
    ap.add_argument("--steps", type=int, default=300_000, help="agent steps (frames) in all")
    ap.add_argument("--out_dir", required=True, default=argparse.SUPPRESS, help="a new or empty folder (required)")
    ap.add_argument("--seed", type=int, default=0, help=">= 0; each worker plays its own stream seeded from it")
    ap.add_argument("--policy", default="random", help="random, sticky (random actions held ~8 steps), or tracker (Pong: returns the ball)")
    ap.add_argument("--num_envs", type=int, default=2, help="environments in parallel processes")
    ap.add_argument("--shard_steps", type=int, default=10_000, help="rows per shard (per worker)")
    a = ap.parse_args(argv)
    try:
        out = record_dataset(a.game, a.steps, a.out_dir, a.seed, a.policy, a.num_envs, a.shard_steps)
    except KeyboardInterrupt as e:
        print(e)
        raise SystemExit(130)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(f"recorded {a.steps} steps of {a.game} into {out}")


if __name__ == "__main__":
    from data.d4rl_frames import main as _main  # the importable copy: worker processes find their function by name
    _main()
