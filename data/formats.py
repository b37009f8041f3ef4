"""On-disk formats of frame datasets: ours (written atomically with checksums), the predecessor's
shards and d4rl-atari's files, all read without copying frames: DiskFrames reads rows on demand.

Only files here, no ALE: data/d4rl_frames.py records datasets and turns every source into a
FrameData. Our layout is documented at the top of data/d4rl_frames.py.

    frames = DiskFrames.of_files([(path, data_offset, rows)])   # uint8 (N, 84, 84), stays on disk
    batch = frames[idx]                                          # int array (B, K) -> (B, K, 84, 84)
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np

from data import MissingInput, UsageError

FRAME_SHAPE = (84, 84)
FRAME_BYTES = 84 * 84
CHECKSUM = "sha256"      # with the CPU's SHA instructions: ~0.94 GB/s here, blake2b ~0.48 GB/s
FORMAT, VERSION = "neural-atari-regen/frames", 1
FIELDS = {               # one .npy file per field per shard: dtype, shape of one row
    "frames": ("uint8", FRAME_SHAPE),
    "actions": ("uint8", ()),       # ALE action index (at most 18 actions)
    "rewards": ("float32", ()),
    "terminated": ("bool", ()),
    "truncated": ("bool", ()),
    "episode": ("int64", ()),       # episode index within its worker's stream
    "ram": ("uint8", (128,)),
}
MAX_READ_ROWS = 100_000  # one read call stays far below Linux's ~2 GB limit per call

# ------------------------------------------------------------------------------------ .npy files


class _HashingFile:
    """What np.save writes goes through here, so the checksum costs no second read of the file."""

    def __init__(self, f):
        self.f, self.hash = f, hashlib.new(CHECKSUM)

    def write(self, b) -> int:
        self.hash.update(b)
        return self.f.write(b)


def save_npy(path: Path, arr: np.ndarray) -> dict:
    """Write `arr` to `path` under a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as f:
        w = _HashingFile(f)
        np.save(w, np.ascontiguousarray(arr), allow_pickle=False)
    os.replace(tmp, path)
    return {"file": path.name, "bytes": path.stat().st_size, CHECKSUM: w.hash.hexdigest()}


def write_json(path: Path, obj: dict) -> None:
    """Atomic JSON write (temporary file + os.replace): a manifest is always the old or the new one."""
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def npy_header(path: Path) -> tuple[np.dtype, tuple, int]:
    """dtype, shape and data offset of an .npy file from its header alone; truncation is an error."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            offset = f.tell()
    except FileNotFoundError:
        raise MissingInput(f"{path} is missing") from None
    except (ValueError, OSError, EOFError) as e:
        raise UsageError(f"{path} is not a readable .npy file ({e}): the file is damaged; restore or recreate it") from None
    if fortran:
        raise UsageError(f"{path} is stored in Fortran order; save it with np.save from a C-ordered array")
    need, size = offset + int(np.prod(shape)) * dtype.itemsize, path.stat().st_size
    if size < need:
        raise UsageError(f"{path} is truncated: its header promises {dtype} {shape} ({need} bytes) but the file "
                         f"holds {size} bytes; restore it or record the dataset again")
    return dtype, tuple(shape), offset


def check_npy(path: Path, dtype, shape: tuple, what: str) -> int:
    """Header of `path` must say `dtype` and `shape`; returns the data offset."""
    got_dtype, got_shape, offset = npy_header(path)
    if got_dtype != np.dtype(dtype) or got_shape != tuple(shape):
        raise UsageError(f"{path} holds {got_dtype} {got_shape} but {what} expects {np.dtype(dtype)} {tuple(shape)}")
    return offset


def file_checksum(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, CHECKSUM).hexdigest()

# ------------------------------------------------------------------------------------ frames on disk


class DiskFrames:
    """uint8 (N, 84, 84) frames that stay on disk; rows are read on demand with os.preadv.

    Row i lives in file paths[file_of[i]] at byte pos[i], so one object spans many shards, skips
    rows (d4rl's padding frames) or interleaves files (the predecessor's final frames) without
    copying a frame. Indexing returns ordinary in-memory arrays holding only the rows asked for:
    frames[i], frames[a:b], frames[idx] for int arrays of any shape -> idx.shape + (84, 84).
    np.asarray(frames) reads everything; frames.sub(a, b) is a lazy slice.

    Why not np.memmap: every page a mapping touches counts toward the process's RSS, and on this
    kernel a fault maps a whole 2 MB page-cache folio, so 1,000 random frames from a memmap added
    ~1 GB of RSS. Reads keep RSS flat while the OS page cache still keeps the files hot.
    """

    def __init__(self, paths: list[str], file_of: np.ndarray, pos: np.ndarray):
        self.paths = [str(p) for p in paths]
        self._file = np.asarray(file_of, np.int32)  # (N,) which file holds row i
        self._pos = np.asarray(pos, np.int64)       # (N,) byte offset of row i in that file
        self._fds: list[int] | None = None
        self.dtype, self.ndim = np.dtype(np.uint8), 3
        self.shape = (len(self._pos), *FRAME_SHAPE)

    @classmethod
    def of_files(cls, parts: list[tuple[Path, int, int]]) -> DiskFrames:
        """Concatenate contiguous (path, data offset, rows) blocks of frames, in order."""
        file_of = np.concatenate([np.full(n, i, np.int32) for i, (_, _, n) in enumerate(parts)])
        pos = np.concatenate([off + np.arange(n, dtype=np.int64) * FRAME_BYTES for _, off, n in parts])
        return cls([p for p, _, _ in parts], file_of, pos)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"DiskFrames({len(self)} frames of uint8 84x84 in {len(self.paths)} files)"

    def sub(self, a: int, b: int) -> DiskFrames:
        """Rows a..b-1 as another DiskFrames: nothing is read."""
        return DiskFrames(self.paths, self._file[a:b], self._pos[a:b])

    def __getitem__(self, key) -> np.ndarray:
        n = len(self)
        if isinstance(key, (int, np.integer)):
            if not -n <= key < n:
                raise IndexError(f"frame {key} out of range for {n} frames")
            return self._read(np.array([key % n]))[0]
        if isinstance(key, slice):
            return self._read(np.arange(*key.indices(n)))
        if isinstance(key, tuple):
            raise TypeError("DiskFrames takes row indices only: frames[rows][..., r0:r1] for parts of frames")
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"frame indices must be integers, got {idx.dtype}")
        flat = idx.reshape(-1).astype(np.int64)
        if flat.size and (flat.min() < -n or flat.max() >= n):
            raise IndexError(f"frame index out of range for {n} frames")
        return self._read(flat % max(n, 1)).reshape(*idx.shape, *FRAME_SHAPE)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def _open(self) -> list[int]:
        if self._fds is None:
            self._fds = [os.open(p, os.O_RDONLY) for p in self.paths]
        return self._fds

    def _read(self, rows: np.ndarray) -> np.ndarray:
        n = len(rows)
        out = np.empty((n, *FRAME_SHAPE), np.uint8)
        if n == 0:
            return out
        f, p = self._file[rows], self._pos[rows]
        # Rows lying back to back in one file (a K-frame context, a slice) are read with one call.
        new = np.ones(n, bool)
        new[1:] = (f[1:] != f[:-1]) | (p[1:] != p[:-1] + FRAME_BYTES)
        starts = np.flatnonzero(new)
        ends = np.append(starts[1:], n)
        flat, fds = out.reshape(n, FRAME_BYTES), self._open()
        for s, e, fi, off in zip(starts.tolist(), ends.tolist(), f[starts].tolist(), p[starts].tolist()):
            for a in range(s, e, MAX_READ_ROWS):
                b = min(e, a + MAX_READ_ROWS)
                if os.preadv(fds[fi], [flat[a:b]], off + (a - s) * FRAME_BYTES) != (b - a) * FRAME_BYTES:
                    raise UsageError(f"{self.paths[fi]} ended before frame byte {off + (b - s) * FRAME_BYTES}: "
                                     f"the file was truncated after loading")
        return out

    def __getstate__(self) -> dict:  # file descriptors do not cross processes; reopen there
        return {**self.__dict__, "_fds": None}

    def __del__(self) -> None:
        for fd in self._fds or []:
            os.close(fd)

# ------------------------------------------------------------------------------------ our shards


def shard_name(worker: int, chunk: int, field: str) -> str:
    return f"shard_w{worker}_{chunk:05d}_{field}.npy"


def write_shard(folder: Path, worker: int, chunk: int, arrays: dict[str, np.ndarray]) -> dict:
    """One shard: every field's rows as its own .npy (temporary name + rename), checksummed as written."""
    rows = len(arrays["frames"])
    files = {k: save_npy(folder / shard_name(worker, chunk, k), np.asarray(arrays[k], FIELDS[k][0]))
             for k in FIELDS}
    ep = arrays["episode"]
    return {"worker": worker, "chunk": chunk, "rows": rows,
            "episodes": [int(ep[0]), int(ep[-1])], "files": files}


def read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not path.is_file():
        raise MissingInput(
            f"{path} not found: {folder} is not a dataset folder. Record one with `python -m data.d4rl_frames "
            f"--game Pong --steps 300000 --out_dir {folder}`, or point data.source at a folder holding a "
            f"manifest.json (ours or the predecessor's), or at d4rl:<id> such as d4rl:pong-mixed-v4")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON ({e}); restore it or record the dataset again") from None


def read_shards(folder: Path, manifest: dict, verify: bool = True) -> tuple[DiskFrames, dict[str, np.ndarray]]:
    """Our shard folder -> frames on disk and the small fields in memory, streams back to back.

    Shards are ordered by (worker, chunk): each worker's stream stays contiguous, and episodes are
    renumbered 0, 1, ... in that order, so an episode never spans two workers. Every file's header
    (dtype, rows) and byte size is checked against the manifest; with verify, its checksum too
    (one read of the dataset: ~1 s per GB here).
    """
    where = folder / "manifest.json"
    if manifest.get("version") != VERSION:
        raise UsageError(f"{where}: format version {manifest.get('version')} is not {VERSION}; record it again")
    shards = sorted(manifest.get("shards", []), key=lambda s: (s["worker"], s["chunk"]))
    if not shards or sum(s["rows"] for s in shards) == 0:
        raise UsageError(f"{where}: empty dataset, it lists no shards (was recording stopped before its first "
                         f"shard?); record it again")
    for prev, s in zip([None, *shards], shards):
        first = prev is None or prev["worker"] != s["worker"]
        if s["chunk"] != (0 if first else prev["chunk"] + 1):
            raise UsageError(f"{where}: worker {s['worker']}'s chunk {s['chunk']} follows "
                             f"{'nothing' if first else prev['chunk']}: a shard is missing from its stream")
    if manifest.get("counts", {}).get("steps") != sum(s["rows"] for s in shards):
        raise UsageError(f"{where}: counts.steps={manifest.get('counts', {}).get('steps')} disagrees with its "
                         f"shards' rows ({sum(s['rows'] for s in shards)}); the manifest was edited or damaged")
    parts, small = [], {k: [] for k in FIELDS if k != "frames"}
    for s in shards:
        for k, (dtype, row) in FIELDS.items():
            meta = s["files"][k]
            path = folder / meta["file"]
            if not path.is_file():
                raise MissingInput(f"{path} is listed in {where} but missing; restore it or record again")
            offset = check_npy(path, dtype, (s["rows"], *row), f"{where} (shard w{s['worker']} chunk {s['chunk']})")
            if path.stat().st_size != meta["bytes"]:
                raise UsageError(f"{path} has {path.stat().st_size} bytes but {where} says {meta['bytes']}")
            if verify and file_checksum(path) != meta[CHECKSUM]:
                raise UsageError(f"{path}: checksum mismatch ({CHECKSUM} differs from {where}): the file changed "
                                 f"or is corrupt; restore it or record the dataset again")
            if k == "frames":
                parts.append((path, offset, s["rows"]))
            else:
                small[k].append(np.load(path))
    arrays = {k: np.concatenate(v) for k, v in small.items()}
    worker = np.concatenate([np.full(s["rows"], s["worker"]) for s in shards])
    ep = arrays["episode"]
    new = np.ones(len(ep), bool)
    new[1:] = (ep[1:] != ep[:-1]) | (worker[1:] != worker[:-1])
    arrays["episode"] = np.cumsum(new) - 1      # 0, 1, ... : unique across workers, non-decreasing
    return DiskFrames.of_files(parts), arrays

# ------------------------------------------------------------------------------------ the predecessor's shards


def read_predecessor(folder: Path, manifest: dict) -> tuple[DiskFrames, dict[str, np.ndarray]]:
    """The predecessor's shards, unconverted: frame t is obs[t, -1]; where an episode ends (done, or
    the dataset's last transition) its next_obs is added as the episode's last frame (action 0)."""
    where = folder / "manifest.json"
    shards = sorted(manifest["shards"], key=lambda s: s["id"])
    if not shards or sum(s["count"] for s in shards) == 0:
        raise UsageError(f"{where}: empty dataset, it lists no transitions")
    if manifest["total"] != sum(s["count"] for s in shards):
        raise UsageError(f"{where}: total={manifest['total']} but its shards' counts add up to "
                         f"{sum(s['count'] for s in shards)}")
    paths, obs_at, next_at, action, done = [], [], [], [], []   # obs_at / next_at: byte offsets per transition
    for s in shards:
        n, what = s["count"], f"{where} (shard {s['id']}, count {s['count']})"
        p = {k: folder / Path(s[k]).name for k in ("obs", "next_obs", "action", "done")}
        for q in p.values():
            if not q.is_file():
                raise MissingInput(f"{q} is listed in {where} but missing")
        shape = npy_header(p["obs"])[1]
        stack = shape[1] if len(shape) == 4 else 4
        row = np.arange(n, dtype=np.int64) * FRAME_BYTES
        obs_at.append(check_npy(p["obs"], np.uint8, (n, stack, *FRAME_SHAPE), what) + row * stack + (stack - 1) * FRAME_BYTES)
        next_at.append(check_npy(p["next_obs"], np.uint8, (n, 1, *FRAME_SHAPE), what) + row)
        paths += [p["obs"], p["next_obs"]]
        for k, into, kinds in (("action", action, "iu"), ("done", done, "b")):
            dtype, shape, _ = npy_header(p[k])
            if shape != (n,) or dtype.kind not in kinds:
                raise UsageError(f"{p[k]} holds {dtype} {shape} but {what} expects {'int' if k == 'action' else 'bool'} ({n},)")
            into.append(np.load(p[k]))
    obs_file = np.concatenate([np.full(s["count"], 2 * i, np.int32) for i, s in enumerate(shards)])
    obs_at, next_at = np.concatenate(obs_at), np.concatenate(next_at)
    action, done = np.concatenate(action).astype(np.int64), np.concatenate(done).astype(bool)
    T = len(done)
    ends = done.copy()
    ends[-1] = True
    t_end = np.flatnonzero(ends)
    p_obs = np.arange(T) + np.cumsum(ends) - ends           # frame index of transition t's obs
    p_next = p_obs[t_end] + 1                               # ... and of an episode's final next_obs
    F = T + len(t_end)
    file_of, pos = np.empty(F, np.int32), np.empty(F, np.int64)
    file_of[p_obs], pos[p_obs] = obs_file, obs_at
    file_of[p_next], pos[p_next] = obs_file[t_end] + 1, next_at[t_end]
    actions, episode, terminated = np.zeros(F, np.int64), np.empty(F, np.int64), np.zeros(F, bool)
    actions[p_obs] = action
    episode[p_obs] = np.cumsum(done) - done
    episode[p_next] = episode[p_obs[t_end]]
    terminated[p_next] = done[t_end]   # done may also have meant a time limit: the layout does not say
    frames = DiskFrames(paths, file_of, pos)
    # The layout only works if rows are consecutive transitions of one stream: check some, and every
    # shard boundary inside an episode (2 frames each, cheap).
    inner = np.flatnonzero(~ends)
    t = np.union1d(inner[np.linspace(0, len(inner) - 1, min(16, len(inner))).astype(int)],
                   np.intersect1d(inner, np.cumsum([s["count"] for s in shards]) - 1)).astype(np.int64)
    if len(t) and not np.array_equal(DiskFrames(paths, obs_file[t] + 1, next_at[t])[:], frames[p_obs[t + 1]]):
        raise UsageError(f"{where}: next_obs[t] differs from obs[t + 1][-1] inside an episode: the shards do not hold "
                         f"consecutive transitions of one stream, so episodes cannot be rebuilt")
    return frames, dict(actions=actions, episode=episode, terminated=terminated)

# ------------------------------------------------------------------------------------ d4rl-atari files

D4RL_FILES = ("observation", "action", "reward", "terminal")


def read_d4rl(where: Path, checkpoint: int) -> tuple[DiskFrames, dict[str, np.ndarray]]:
    """d4rl-atari files, read directly: each gzip .npy is decompressed once into <name>.npy beside it
    (observation: ~7 GB for 1M steps), then frames are read from that file on demand.

    Dopamine's replay buffer starts every episode with 3 all-zero padding frames (action 0); they
    are dropped: they are not game frames, and a model would learn that black screens turn into
    Pong. terminal[t] = 1 marks an episode's last stored frame (the final observation is not stored).
    Rows are taken in file order, as d4rl-atari does.
    """
    paths = _d4rl_files(where, checkpoint)
    n = (npy_header(paths["observation"])[1] or (0,))[0]
    offset = check_npy(paths["observation"], np.uint8, (n, *FRAME_SHAPE), f"d4rl files in {where}")
    small = {}
    for k in D4RL_FILES[1:]:
        arr = np.load(paths[k])
        if arr.shape != (n,):
            raise UsageError(f"{paths[k]} holds {arr.shape} rows but observation has ({n},)")
        small[k] = arr
    terminal = small["terminal"].astype(bool)
    episode_of = np.cumsum(terminal) - terminal                    # a terminal row ends its episode
    first = np.maximum.accumulate(np.where(np.r_[True, terminal[:-1]], np.arange(n), 0))
    cand = np.flatnonzero(np.arange(n) - first < 3)                # an episode's first 3 rows
    raw = DiskFrames.of_files([(paths["observation"], offset, n)])
    keep = np.ones(n, bool)
    keep[cand[~raw[cand].reshape(len(cand), -1).any(1)]] = False   # ... that are all zero: padding
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        raise UsageError(f"{paths['observation']}: empty dataset, every frame is padding")
    episode = np.cumsum(np.r_[0, np.diff(episode_of[rows]) != 0])
    frames = DiskFrames(raw.paths, np.zeros(len(rows)), offset + rows * FRAME_BYTES)
    return frames, dict(actions=small["action"][rows].astype(np.int64), episode=episode,
                        rewards=small["reward"][rows].astype(np.float32), terminated=terminal[rows])


def _d4rl_files(where: Path, checkpoint: int) -> dict[str, Path]:
    """<where>/<name>.npy for each file, decompressed once from <name>.gz (d4rl-atari's name) or
    the DQN Replay Dataset's own $store$_<name>_ckpt.<N>.gz."""
    def found(k: str) -> Path | None:
        names = (f"{k}.npy", f"{k}.gz", f"$store$_{k}_ckpt.{checkpoint}.gz")
        return next((where / n for n in names if (where / n).is_file()), None)
    if not all(map(found, D4RL_FILES)):
        try:   # the package can fetch them (gsutil, with Google Cloud credentials)
            from d4rl_atari.offline_env import download_dataset
            download_dataset(where.parent.parent.name, int(where.parent.name), checkpoint)
        except (ImportError, OSError):  # not installed, or no gsutil: the error below says what to do
            pass
    missing = [k for k in D4RL_FILES if not found(k)]
    if missing:
        raise MissingInput(
            f"d4rl files missing ({', '.join(missing)}): expected {', '.join(f'{k}.gz' for k in D4RL_FILES)} in "
            f"{where} (d4rl-atari's names; the DQN Replay Dataset's $store$_<name>_ckpt.{checkpoint}.gz work too). "
            f"The public bucket gs://atari-replay-datasets no longer serves anonymous downloads: copy the files "
            f"there yourself, or set D4RL_DATASET_DIR to the folder that holds <Game>/<run>/<checkpoint>/")
    out = {}
    for k in D4RL_FILES:
        src, out[k] = found(k), where / f"{k}.npy"
        if src != out[k]:
            print(f"decompressing {src} once into {out[k]}")
            tmp = where / f".tmp-{k}.npy"
            try:
                with gzip.open(src, "rb") as f, open(tmp, "wb") as g:
                    shutil.copyfileobj(f, g, 16 << 20)
            except (OSError, EOFError, zlib.error) as e:
                tmp.unlink(missing_ok=True)
                raise UsageError(f"{src} is not a complete gzip file ({e}): copy it again") from None
            os.replace(tmp, out[k])
    return out
