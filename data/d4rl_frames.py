"""Frame sources: where the world model's (frame, action, episode) streams come from.

The embedded default records real Atari frames with Gymnasium + ale-py (the ROMs ship inside
ale-py: no download). Preprocessing is DQN's, the same as d4rl-atari's, so frames from every
source are interchangeable: ALE v5 with frameskip=1 and sticky actions off, wrapped in
AtariPreprocessing(frame_skip=4, screen_size=84, grayscale_obs=True, noop_max=30).

    from data.d4rl_frames import record
    train = record("Pong", steps=5000, seed=0)      # FrameData: frames uint8 (N, 84, 84), ...
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

FRAME_SHAPE = (84, 84)
PREPROCESSING = dict(frame_skip=4, screen_size=84, grayscale_obs=True, noop_max=30)


@dataclass
class FrameData:
    """One recording: frames stored once, in time order, episodes back to back.

    actions[t] is the ALE action taken at frames[t]; it produced frames[t + 1] when
    episode[t + 1] == episode[t]. The last frame of an episode has action 0 and no successor.
    """
    frames: np.ndarray    # uint8 (N, 84, 84)
    actions: np.ndarray   # int64 (N,)
    episode: np.ndarray   # int64 (N,) episode id of each frame, non-decreasing
    ram: np.ndarray | None  # uint8 (N, 128) emulator RAM at each frame (object labels), or None
    game: str
    num_actions: int

    def __post_init__(self) -> None:
        # Checked once at the door: everything downstream trusts these.
        n = len(self.frames)
        if self.frames.dtype != np.uint8 or self.frames.shape[1:] != FRAME_SHAPE:
            raise ValueError(f"frames must be uint8 (N, 84, 84), got {self.frames.dtype} {self.frames.shape}")
        if n == 0:
            raise ValueError("empty dataset: no frames")
        if self.actions.shape != (n,) or self.episode.shape != (n,):
            raise ValueError(f"actions {self.actions.shape} and episode {self.episode.shape} must be ({n},)")
        if self.actions.min() < 0 or self.actions.max() >= self.num_actions:
            raise ValueError(f"actions must lie in [0, {self.num_actions}), got [{self.actions.min()}, {self.actions.max()}]")
        if np.any(np.diff(self.episode) < 0):
            raise ValueError("episode ids must be non-decreasing (episodes stored back to back)")

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


# ---------------------------------------------------------------- ALE (the embedded default)

def ale_env_id(game: str) -> str:
    """'Pong' -> 'ALE/Pong-v5'; an unknown game gets an error naming close matches."""
    import ale_py
    import gymnasium as gym
    gym.register_envs(ale_py)
    games = sorted(k[4:-3] for k in gym.registry if k.startswith("ALE/") and k.endswith("-v5"))
    if game not in games:
        close = difflib.get_close_matches(game, games, n=3, cutoff=0.5) or games[:5]
        raise ValueError(f"unknown Atari game {game!r}; close matches: {', '.join(close)} "
                         f"(names as in ALE/<Game>-v5)")
    return f"ALE/{game}-v5"


def make_env(game: str = "Pong"):
    """One ALE environment with DQN preprocessing: observations uint8 (84, 84)."""
    import gymnasium as gym
    env = gym.make(ale_env_id(game), frameskip=1, repeat_action_probability=0.0)
    return gym.wrappers.AtariPreprocessing(env, **PREPROCESSING)


def record(game: str = "Pong", steps: int = 5000, seed: int = 0, policy: str = "random") -> FrameData:
    """Play `steps` agent steps (frames) of `game` with `policy`, seeded, in one environment."""
    if policy != "random":
        raise ValueError(f"unknown policy {policy!r}; available: random")
    env = make_env(game)
    rng = np.random.default_rng(seed)
    n_act = int(env.action_space.n)
    frames = np.empty((steps, *FRAME_SHAPE), np.uint8)
    ram = np.empty((steps, 128), np.uint8)
    actions = np.zeros(steps, np.int64)
    episode = np.zeros(steps, np.int64)
    ale = env.unwrapped.ale
    obs, _ = env.reset(seed=seed)
    ep, done = 0, False
    for t in range(steps):
        frames[t], ram[t], episode[t] = obs, ale.getRAM(), ep
        if done:  # frames[t] was its episode's last frame (action 0): open the next episode
            obs, _ = env.reset()
            ep, done = ep + 1, False
            continue
        actions[t] = rng.integers(n_act)
        obs, _, terminated, truncated, _ = env.step(int(actions[t]))
        done = terminated or truncated
    env.close()
    return FrameData(frames, actions, episode, ram, game, n_act)
