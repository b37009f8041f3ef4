"""torchrun: two CPU processes (gloo) train the same model as one process; only rank 0 writes;
a dead rank stops the run, and --resume under torchrun finishes it."""
import csv
import os
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT

TINY = ["data.train_steps=400", "data.val_steps=300", "data.table_steps=0", "model.width=16", "model.hidden=64", "eval.rollout_frames=20",
        "eval.video_frames=20", "eval.log_every=1"]
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")


def launch(args: list[str], processes: int = 2, env: dict | None = None, timeout: int = 300):
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
           if processes > 1 else [sys.executable])
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", **(env or {}))
    return subprocess.run([*cmd, "world_model.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def rows(run) -> list[dict]:
    return list(csv.DictReader(open(run / "metrics.csv")))


def test_two_processes_train_what_one_trains_and_only_rank_0_writes(tmp_path):
    args = [*TINY, "ae.steps=3", "pred.steps=3", "tune.steps=3", "eval.val_every=3"]
    two = launch([*args, f"experiment.out_dir={tmp_path}/two"])
    one = launch([*args, f"experiment.out_dir={tmp_path}/one"], processes=1)
    assert two.returncode == 0 and one.returncode == 0, two.stderr[-3000:]
    (run2,), (run1,) = (tmp_path / "two").iterdir(), (tmp_path / "one").iterdir()   # one run folder each
    assert two.stdout.count("held-out objects") == 1                                  # one summary, rank 0's
    assert sorted(p.name for p in (run2 / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    r2, r1 = rows(run2), rows(run1)
    assert [(r["phase"], r["step"]) for r in r2] == [(r["phase"], r["step"]) for r in r1]
    for a, b in zip(r2, r1):             # the global batch's losses: equal up to the order of float sums
        for k in ("loss", "coord"):
            assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-4), (a, b)
        assert float(a["samples_per_s"]) > 0
    w2, w1 = (torch.load(r / "checkpoints" / "last.pt", weights_only=True)["model"] for r in (run2, run1))
    # Adam turns float-order differences of near-zero gradients into steps of up to lr (3e-3) in 6 steps.
    assert max((w2[k].float() - w1[k].float()).abs().max().item() for k in w1 if w1[k].numel()) < 3e-3


def test_a_dead_rank_stops_the_run_and_resume_under_torchrun_finishes_it(tmp_path):
    args = [*TINY, "ae.steps=6", "pred.steps=6", "tune.steps=6", "eval.val_every=2", f"experiment.out_dir={tmp_path}/runs"]
    t = time.perf_counter()
    dead = launch(args, env={"WM_DIE_AT": "ae:4@1"})                 # rank 1 is SIGKILLed after step 4
    assert dead.returncode != 0 and time.perf_counter() - t < 120
    assert "Signal 9 (SIGKILL) received" in dead.stderr + dead.stdout
    (run,) = (tmp_path / "runs").iterdir()
    assert not (run / "summary.json").exists()
    done = launch(["--resume", str(run)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert [(r["phase"], int(r["step"])) for r in rows(run)] == [(p, s) for p in ("ae", "pred", "tune") for s in range(1, 7)]
    assert (run / "summary.json").is_file() and done.stdout.count("held-out objects") == 1


def test_a_batch_that_does_not_split_is_refused_on_every_rank(tmp_path):
    bad = launch([*TINY, "ae.batch_size=33", f"experiment.out_dir={tmp_path}/runs"])
    assert bad.returncode != 0 and "ae.batch_size=33 does not split into 2 processes" in bad.stderr
    assert not (tmp_path / "runs").exists()


def test_latents_on_disk_give_the_batches_of_latents_in_memory(trained, train_data, tmp_path):
    """Above pred.latents_on_disk_above frames the predictor reads its latents from files, batch by batch."""
    import numpy as np

    import world_model as W
    wm = trained[0]
    mem, disk = W.Latents(wm, train_data), W.Latents(wm, train_data, tmp_path / "lat")
    try:
        for a, b in zip(mem.stats(), disk.stats()):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
        assert np.array_equal(mem.serves, disk.serves)
        w = torch.from_numpy(W.window_batch(train_data.starts(12), 12, 64, np.random.default_rng(0)))   # (64, 12)
        for a, b in zip(mem.rows(w), disk.rows(w)):
            assert a.shape == b.shape and torch.equal(a, b)
        assert sorted(p.name for p in (tmp_path / "lat").iterdir()) == ["u.f32", "z.f32"]
    finally:
        mem.close(), disk.close()
    assert not list((tmp_path / "lat").iterdir())                      # the files go with the phase
