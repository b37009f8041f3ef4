"""Offline datasets: recording shards, reading ours / the predecessor's / d4rl-atari's files, bad input.

Everything runs on tiny real ALE recordings (a few hundred frames) in tmp folders; nothing is downloaded.
"""
import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data.d4rl_frames import (FrameData, d4rl_location, load_source, rally_stats, record, record_dataset,
                              split_episodes, stream_seed)
from data.formats import DiskFrames, npy_header

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def recorded(tmp_path_factory) -> Path:
    """300 Pong steps from 2 workers in shards of 64 rows: each worker's 150 rows -> shards of 64, 64, 22."""
    out = tmp_path_factory.mktemp("recorded") / "pong"
    record_dataset("Pong", 300, out, seed=0, num_envs=2, shard_steps=64, progress=False)
    return out


@pytest.fixture
def copy(recorded, tmp_path) -> Path:
    """A private copy of the recorded dataset, to damage."""
    return Path(shutil.copytree(recorded, tmp_path / "ds"))


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def rewrite(folder: Path, file: str, arr: np.ndarray) -> None:
    """Replace a shard file and make the manifest agree on its bytes and checksum (so only the header differs)."""
    np.save(folder / file, arr)
    m = manifest_of(folder)
    for s in m["shards"]:
        for meta in s["files"].values():
            if meta["file"] == file:
                meta["bytes"] = (folder / file).stat().st_size
                meta["sha256"] = hashlib.sha256((folder / file).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(m))

# ------------------------------------------------------------------------------------ our shards


def test_record_dataset_round_trip(recorded):
    m = manifest_of(recorded)
    assert m["format"] == "neural-atari-regen/frames" and m["version"] == 1 and m["complete"]
    assert (m["game"], m["policy"], m["seed"], m["num_envs"], m["num_actions"]) == ("Pong", "random", 0, 2, 6)
    assert m["preprocessing"]["frame_skip"] == 4 and m["preprocessing"]["repeat_action_probability"] == 0.0
    assert m["counts"] == {"steps": 300, "episodes": 2}
    assert sorted((s["worker"], s["chunk"], s["rows"]) for s in m["shards"]) == \
        [(w, c, r) for w in (0, 1) for c, r in enumerate((64, 64, 22))]
    for s in m["shards"]:
        assert len(s["files"]) == 7
        for meta in s["files"].values():
            data = (recorded / meta["file"]).read_bytes()
            assert len(data) == meta["bytes"] and hashlib.sha256(data).hexdigest() == meta["sha256"]
    d = load_source(str(recorded), game="Pong")
    # Worker w's stream is exactly what record() plays from stream_seed(0, w); streams back to back.
    ref = [record("Pong", 150, stream_seed(0, w)) for w in (0, 1)]
    assert len(d) == 300 and d.num_actions == 6 and d.game == "Pong"
    for k in ("frames", "actions", "ram", "rewards", "terminated", "truncated"):
        assert np.array_equal(np.asarray(getattr(d, k)), np.concatenate([getattr(r, k) for r in ref])), k
    assert np.array_equal(d.episode, np.repeat([0, 1], 150))                  # one running episode per stream
    idx = np.random.default_rng(0).integers(0, 300, (16, 5))
    assert np.array_equal(d.frames[idx], np.concatenate([r.frames for r in ref])[idx])   # (B, K) gather


def test_starts_never_cross_streams(recorded):
    d = load_source(str(recorded))
    s = d.starts(5)
    assert 145 in s and not np.isin(np.arange(146, 150), s).any()   # rows 146..149 would reach worker 1's stream
    assert np.all(d.episode[s] == d.episode[s + 4])


def test_frames_stay_on_disk(copy):
    d = load_source(str(copy), verify=False)
    assert isinstance(d.frames, DiskFrames) and d.frames.shape == (300, 84, 84) and d.frames.dtype == np.uint8
    before = d.frames[5].copy()
    # Change pixel (0, 0) of frame 5 in its file: the already loaded dataset sees it, so it holds no copy.
    path = copy / "shard_w0_00000_frames.npy"
    with open(path, "r+b") as f:
        f.seek(npy_header(path)[2] + 5 * 84 * 84)
        f.write(bytes([255 - before[0, 0]]))
    assert d.frames[5][0, 0] == 255 - before[0, 0] and np.array_equal(d.frames[5][1:], before[1:])
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_source(str(copy))


def test_interrupted_recording_keeps_complete_shards(tmp_path):
    out = tmp_path / "pong"
    # Python's own Ctrl-C handler, set explicitly: a shell's background jobs start with SIGINT ignored.
    code = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from data.d4rl_frames import main; "
            f"main(['--steps', '1000000', '--out_dir', {str(out)!r}, '--shard_steps', '100'])")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < 60 and not ((out / "manifest.json").exists() and len(manifest_of(out)["shards"]) >= 2):
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGINT)       # Ctrl-C: the whole process group, workers included
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stderr[-2000:]
    assert "recording interrupted" in stdout
    m = manifest_of(out)
    assert not m["complete"] and len(m["shards"]) >= 2
    d = load_source(str(out))            # every listed shard is complete: headers, sizes and checksums agree
    assert len(d) == m["counts"]["steps"] == sum(s["rows"] for s in m["shards"])
    assert not any(f.startswith(".tmp") for s in m["shards"] for f in (v["file"] for v in s["files"].values()))


def test_split_by_whole_episodes(recorded, train_data):
    tr, va = split_episodes(load_source(str(recorded)), 0.5)      # worker 0's stream | worker 1's
    assert isinstance(tr.frames, DiskFrames) and (len(tr), len(va)) == (150, 150)
    assert set(tr.episode) == {0} and set(va.episode) == {1}
    d = train_data
    ep = np.repeat([0, 1, 2, 3], [100, 120, 80, 100])
    tr, va = split_episodes(FrameData(d.frames, d.actions, ep, d.ram, "Pong", 6), 0.4)
    assert len(va) == 180 and set(tr.episode).isdisjoint(va.episode)          # episodes 2 and 3: the cut nearest 40 %
    assert np.shares_memory(va.frames, d.frames)                              # a slice, not a copy
    with pytest.raises(ValueError, match="single episode"):
        split_episodes(d, 0.2)

# ------------------------------------------------------------------------------------ other layouts


def predecessor_fixture(d: FrameData, folder: Path, cut: int = 150, counts=(200, 198)) -> Path:
    """The predecessor's layout from real frames s_0..s_399: episode A = s_0..s_{cut-1} (its last
    transition done, next_obs = its final frame), episode B = the rest (no done: the data ends)."""
    folder.mkdir()
    s, a = d.frames, d.actions
    t_obs = np.r_[np.arange(cut - 1), np.arange(cut, len(s) - 1)]             # frame index of each transition
    first = np.where(t_obs < cut, 0, cut)
    stack = np.stack([s[np.maximum(t_obs - k, first)] for k in (3, 2, 1, 0)], 1)  # (T, 4, 84, 84)
    done = t_obs == cut - 2
    shards, lo = [], 0
    for i, n in enumerate(counts):
        names = {k: f"shard_{i:05d}_{k}.npy" for k in ("obs", "next_obs", "action", "done")}
        sl = slice(lo, lo + n)
        for k, arr in (("obs", stack[sl]), ("next_obs", s[t_obs[sl] + 1][:, None]), ("action", a[t_obs[sl]]),
                       ("done", done[sl])):
            np.save(folder / names[k], arr)
        shards.append({"id": i, "count": n, **names})
        lo += n
    (folder / "manifest.json").write_text(json.dumps({"game": "Pong", "steps": 400, "total": lo, "shards": shards}))
    return folder


def test_predecessor_layout_reads_without_conversion(train_data, tmp_path):
    folder = predecessor_fixture(train_data, tmp_path / "old")
    d = load_source(str(folder), game="Pong")
    assert isinstance(d.frames, DiskFrames) and d.ram is None and d.num_actions == 6
    assert np.array_equal(d.frames[:], train_data.frames)          # obs[:, -1] plus each episode's final next_obs
    assert np.array_equal(d.episode, np.repeat([0, 1], [150, 250]))  # one episode spans both shards
    assert np.array_equal(d.actions[:149], train_data.actions[:149]) and d.actions[149] == 0 and d.actions[-1] == 0
    assert d.terminated[149] and not d.terminated[-1]


def test_predecessor_layout_errors(train_data, tmp_path):
    folder = predecessor_fixture(train_data, tmp_path / "old")
    np.save(folder / "shard_00001_obs.npy", np.load(folder / "shard_00001_obs.npy")[::-1])  # rows out of time order
    with pytest.raises(ValueError, match="not hold consecutive transitions"):
        load_source(str(folder))
    with open(folder / "shard_00001_obs.npy", "r+b") as f:
        f.truncate(5000)
    with pytest.raises(ValueError, match="shard_00001_obs.npy is truncated"):
        load_source(str(folder))


def write_d4rl(d: FrameData, where: Path, lengths=(120, 150, 130), names="{}.gz") -> None:
    """d4rl-atari's files from real frames: each episode opens with 3 all-zero frames (Dopamine's padding)."""
    where.mkdir(parents=True)
    obs, act, rew, term, lo = [], [], [], [], 0
    for n in lengths:
        obs += [np.zeros((3, 84, 84), np.uint8), d.frames[lo:lo + n]]
        act += [np.zeros(3, np.int32), d.actions[lo:lo + n].astype(np.int32)]
        rew += [np.zeros(n + 3, np.float32)]
        term += [np.zeros(n + 3, np.uint8)]
        term[-1][-1] = 1
        lo += n
    for name, parts in (("observation", obs), ("action", act), ("reward", rew), ("terminal", term)):
        with gzip.open(where / names.format(name), "wb") as f:
            np.save(f, np.concatenate(parts))


def test_d4rl_files(train_data, tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    assert d4rl_location("pong-mixed-v4")[1:] == (tmp_path / "Pong/5/1", 1)
    assert d4rl_location("pong-expert-v0")[1:] == (tmp_path / "Pong/1/50", 50)
    assert d4rl_location("pong-medium-v0")[2] == 10 and d4rl_location("pong-epoch-10-v2")[1:] == (tmp_path / "Pong/3/10", 10)
    assert d4rl_location("space-invaders-mixed-v0")[0] == "SpaceInvaders"
    write_d4rl(train_data, tmp_path / "Pong/5/1")
    d = load_source("d4rl:pong-mixed-v4", game="Pong")
    assert d.game == "Pong" and d.num_actions == 6 and len(d) == 400       # the padding frames are dropped
    assert np.array_equal(d.frames[:], train_data.frames)
    assert np.array_equal(d.episode, np.repeat([0, 1, 2], [120, 150, 130]))
    assert np.array_equal(d.actions, train_data.actions) and np.flatnonzero(d.terminated).tolist() == [119, 269, 399]
    for f in (tmp_path / "Pong/5/1").glob("*.gz"):   # decompressed once: later loads read the .npy cache
        f.unlink()
    assert np.array_equal(load_source("d4rl:pong-mixed-v4").frames[390:], train_data.frames[390:])
    write_d4rl(train_data, tmp_path / "Pong/1/50", names="$store$_{}_ckpt.50.gz")   # the DQN Replay names
    assert len(load_source("d4rl:pong-expert-v0")) == 400
    write_d4rl(train_data, tmp_path / "Pong/3/1")
    gz = tmp_path / "Pong/3/1/observation.gz"
    gz.write_bytes(gz.read_bytes()[:2000])
    with pytest.raises(ValueError, match="observation.gz is not a complete gzip file"):
        load_source("d4rl:pong-mixed-v2")
    with pytest.raises(FileNotFoundError, match=r"observation.gz, action.gz, reward.gz, terminal.gz in .*Pong/2/1.*"
                                                r"no longer serves anonymous downloads"):
        load_source("d4rl:pong-mixed-v1")

# ------------------------------------------------------------------------------------ bad input


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        load_source(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no dataset folder"):
        load_source(str(tmp_path / "nowhere"))


def test_shard_disagreeing_with_manifest(copy):
    file = manifest_of(copy)["shards"][0]["files"]["actions"]["file"]
    actions = np.load(copy / file)
    rewrite(copy, file, actions.astype(np.int32))
    with pytest.raises(ValueError, match=rf"{file} holds int32 \(64,\) but .* expects uint8 \(64,\)"):
        load_source(str(copy))
    rewrite(copy, file, actions[:-1])
    with pytest.raises(ValueError, match=rf"{file} holds uint8 \(63,\) but .* expects uint8 \(64,\)"):
        load_source(str(copy))


def test_checksum_mismatch_and_truncation(copy):
    path = copy / manifest_of(copy)["shards"][1]["files"]["frames"]["file"]
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1                                      # one bit, same size: only the checksum can tell
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"{path.name}: checksum mismatch"):
        load_source(str(copy))
    assert len(load_source(str(copy), verify=False)) == 300   # verify=False checks headers and sizes only
    path.write_bytes(bytes(raw[:-1000]))
    with pytest.raises(ValueError, match=rf"{path.name} is truncated"):
        load_source(str(copy), verify=False)


def test_empty_dataset(copy):
    m = manifest_of(copy)
    (copy / "manifest.json").write_text(json.dumps({**m, "shards": [], "counts": {"steps": 0, "episodes": 0}}))
    with pytest.raises(ValueError, match="empty dataset"):
        load_source(str(copy))


def test_unknown_game_and_policy(tmp_path):
    with pytest.raises(ValueError, match="unknown Atari game 'Pongg'; close matches: Pong"):
        load_source("d4rl:pongg-mixed-v0")
    with pytest.raises(ValueError, match="unknown Atari game 'Pongg'"):
        record_dataset("Pongg", 10, tmp_path / "x")
    with pytest.raises(ValueError, match="policy 'tracker' .* only Pong"):
        record_dataset("Breakout", 10, tmp_path / "x", policy="tracker")
    with pytest.raises(ValueError, match="unknown policy 'smart'"):
        record("Pong", 10, policy="smart")


def test_other_game_is_refused(tmp_path, recorded):
    out = record_dataset("Breakout", 40, tmp_path / "breakout", num_envs=1, progress=False)
    assert load_source(str(out)).num_actions == 4
    with pytest.raises(ValueError, match=r"holds Breakout \(4 actions\) but Pong \(6 actions\) is expected"):
        load_source(str(out), game="Pong")
    with pytest.raises(ValueError, match="holds Breakout with 4 actions but the model has 6"):
        load_source(str(out), num_actions=6)
    with pytest.raises(ValueError, match="is not empty"):
        record_dataset("Pong", 10, recorded)

# ------------------------------------------------------------------------------------ policies


def test_tracker_returns_the_ball():
    tracker = record("Pong", 1500, seed=0, policy="tracker")
    rnd, trk = rally_stats(record("Pong", 1500, seed=0)), rally_stats(tracker)
    # Measured (seed 0): random returns the ball 7 times in 35 points, the tracker 21 times in 5 points.
    assert trk["returns"] >= 2 * rnd["returns"] and trk["returns_per_point"] >= 5 * rnd["returns_per_point"], (rnd, trk)
    assert trk["steps_per_point"] >= 3 * rnd["steps_per_point"], (rnd, trk)
    assert set(tracker.actions) == set(range(6))                                      # epsilon: all actions appear

# ------------------------------------------------------------------------------------ training on each source


@pytest.mark.parametrize("kind", ["ours", "predecessor", "d4rl"])
def test_trains_on_every_source_without_conversion(kind, recorded, train_data, tmp_path, monkeypatch):
    import world_model as W
    if kind == "ours":
        source = str(recorded)
    elif kind == "predecessor":
        source = str(predecessor_fixture(train_data, tmp_path / "old"))
    else:
        monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
        write_d4rl(train_data, tmp_path / "Pong/5/1")
        source = "d4rl:pong-mixed-v4"
    cfg = W.make_config([*W.SMALL_BUDGET, f"data.source={source}", "data.val_fraction=0.3", "ae.steps=10",
                         "pred.steps=10", f"experiment.out_dir={tmp_path}/runs", f"experiment.assets_dir={tmp_path}/a"])
    s = W.train_and_evaluate(cfg, progress=False)
    train, val = W.load_data(cfg)
    assert not set(train.episode) & set(val.episode)                # held-out episodes are whole and unseen
    assert s["train_frames"] == len(train) and s["reconstruction"]["frames"] == len(val) and len(train) + len(val) in (300, 400)
    assert W.WorldModel.load(Path(s["run_dir"]) / "checkpoints" / "last.pt").num_actions == 6
    assert (Path(s["run_dir"]) / "assets" / "pong_fake.gif").is_file() and not (tmp_path / "a").exists()
