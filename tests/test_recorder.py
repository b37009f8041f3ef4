"""The recorder's command line (python -m data.d4rl_frames): user errors, --help, and a kill -9 mid-run."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.d4rl_frames import load_source, record_dataset

ROOT = Path(__file__).resolve().parents[1]
RECORDER = [sys.executable, "-m", "data.d4rl_frames"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(RECORDER + args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=60)


def children(pid: int) -> list[int]:
    """Every descendant of pid, from /proc/<pid>/task/<tid>/children."""
    out, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def alive(pid: int) -> bool:
    """Running: /proc lists it and it is no zombie (reparented zombies wait for init to reap them)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

# ------------------------------------------------------------------------------------ user errors, --help


@pytest.mark.parametrize("args", [["--game", "Pongg"], ["--steps", "-5"], ["--out_dir", "a_file"],
                                  ["--num_envs", "0"], ["--shard_steps", "0"], ["--seed", "-1"],
                                  ["--steps", "many"], ["--policy", "smart"]], ids=" ".join)
def test_user_errors_are_one_line(args, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    args = ["--out_dir", "pong", "--steps", "10", *args]     # a later option wins
    p = run(args, tmp_path)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.splitlines()) == 1 and p.stderr.startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a_file"]        # nothing created
    if "Pongg" in args:
        assert "Pongg" in p.stderr and "Pong," in p.stderr                  # close matches


def test_help_shows_every_default(tmp_path):
    p = run(["--help"], tmp_path)
    assert p.returncode == 0, p.stderr
    for option, default in [("--game", "Pong"), ("--steps", "300000"), ("--seed", "0"), ("--policy", "random"),
                            ("--num_envs", "2"), ("--shard_steps", "10000"), ("--out_dir", "required")]:
        assert option in p.stdout
        assert default in " ".join(p.stdout.split(option)[-1].split("--")[0].split()), (option, p.stdout)
    assert list(tmp_path.iterdir()) == []

# ------------------------------------------------------------------------------------ kill -9


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds child processes in /proc (Linux)")
def test_workers_die_with_a_killed_recorder(tmp_path):
    out = tmp_path / "pong"
    with open(tmp_path / "log", "w") as log:
        p = subprocess.Popen(RECORDER + ["--steps", "10000000", "--out_dir", str(out), "--shard_steps", "100",
                                         "--num_envs", "2"], cwd=tmp_path, env=ENV, stdout=log, stderr=log)
    workers = []
    try:
        t0 = time.time()
        while time.time() - t0 < 60 and p.poll() is None:
            if (out / "manifest.json").exists() and json.loads((out / "manifest.json").read_text())["shards"]:
                break
            time.sleep(0.1)
        workers = children(p.pid)
        assert len(workers) >= 2, (tmp_path / "log").read_text()[-2000:]
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        t0 = time.time()
        while time.time() - t0 < 5 and any(map(alive, workers)):
            time.sleep(0.1)
        assert not [w for w in workers if alive(w)], "workers outlived their killed parent"
    finally:
        p.kill()
        for w in filter(alive, workers):
            os.kill(w, signal.SIGKILL)
    m = json.loads((out / "manifest.json").read_text())
    assert not m["complete"] and m["shards"]
    assert len(load_source(str(out))) == m["counts"]["steps"]     # every listed shard is whole (checksums too)


def test_unlisted_shards_are_ignored_with_one_line(tmp_path, capsys):
    out = record_dataset("Pong", 120, tmp_path / "pong", num_envs=1, shard_steps=60, progress=False)
    before = load_source(str(out))
    capsys.readouterr()
    for f in out.glob("shard_w0_00001_*.npy"):   # what a killed worker leaves: shards the manifest never listed
        shutil.copy(f, out / f.name.replace("00001", "00002"))
    shutil.copy(out / "shard_w0_00000_frames.npy", out / ".tmp-shard_w0_00003_frames.npy")
    after = load_source(str(out))
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "8 shard files" in err and "interrupted" in err, err
    assert len(after) == len(before) and (after.frames[:] == before.frames[:]).all()
