"""Training you can steer and trust: schedules, losses, the run folder, crash-and-resume, W&B offline."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import world_model as W
from data.probe import probe
from conftest import ROOT

# Small and quick, with a validation (and so a checkpoint) every 10 steps.
FAST = [*W.SMALL_BUDGET, "ae.steps=30", "pred.steps=30", "eval.val_every=10", "eval.log_every=5"]


def cli(*args, env=None, tmp):
    cmd = [sys.executable, "world_model.py", *args]
    e = dict(os.environ, **(env or {}))
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=e)


def rows(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in csv.DictReader(f)]


# ae:25 kills the run while loop 2's first phase trains beside loop 1 (the resumed run trains it again, to the same
# result); pred:15 kills it inside that phase where it runs in the main process (train.beside=false).
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run every killed and resumed run must reproduce, trained once for all of them."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    ref = cli(*FAST, f"experiment.out_dir={tmp}/ref", f"experiment.assets_dir={tmp}/a1", tmp=tmp)
    assert ref.returncode == 0, ref.stderr[-2000:]
    (run,) = (tmp / "ref").iterdir()
    return run


@pytest.mark.parametrize("die_at, extra", [("ae:25", []), ("pred:15", ["train.beside=false"]), ("tune:15", [])])
def test_killed_run_resumes_to_the_same_result(tmp_path, uninterrupted, die_at, extra):
    killed = cli(*FAST, *extra, f"experiment.out_dir={tmp_path}/k", f"experiment.assets_dir={tmp_path}/a2",
                 env={"WM_DIE_AT": die_at}, tmp=tmp_path)
    assert killed.returncode == -9                                   # SIGKILL: no clean-up ran
    (run,) = (tmp_path / "k").iterdir()
    phase, step = die_at.split(":")
    ck = W.read_checkpoint(run / "checkpoints" / "last.pt")
    assert (ck["phase"], ck["step"]) == (phase, int(step) // 10 * 10)  # the last validation before the kill
    assert (phase, str(int(step))) in [(r["phase"], r["step"]) for r in rows(run / "metrics.csv")]
    res = cli("--resume", str(run), tmp=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    ref_run = uninterrupted
    # Same step count and, on CPU with the same seed, the same losses, row for row.
    assert rows(run / "metrics.csv") == rows(ref_run / "metrics.csv")
    assert rows(run / "val_metrics.csv") == rows(ref_run / "val_metrics.csv")
    a, b = W.WorldModel.load(run / "checkpoints" / "last.pt"), W.WorldModel.load(ref_run / "checkpoints" / "last.pt")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_run_without_tuning_saves_the_model_it_dreams_with(tmp_path):
    cfg = W.make_config([*W.SMALL_BUDGET, "ae.steps=10", "pred.steps=10", "tune.steps=0",
                         f"experiment.out_dir={tmp_path}/runs", f"experiment.assets_dir={tmp_path}/a"])
    s = W.train_and_evaluate(cfg, progress=False)
    train, _ = W.load_data(cfg)
    for name in ("last.pt", "best.pt"):
        wm = W.WorldModel.load(Path(s["run_dir"]) / "checkpoints" / name)
        mean, std = W.Latents(wm, train).stats()                           # the encoder's global code, not the probe's 0
        p = wm.predictor
        assert torch.allclose(p.gmean, mean, atol=1e-4) and torch.allclose(p.gstd, std, atol=1e-4), name
        assert p.gstd.min() > 2e-3 and p.codes.abs().max() > 0.1, name   # the probe phase's: 1e-3 and zeros
        assert not p.gp.weight.any(), name                               # a projection never trained on a code


def test_the_balls_step_table_holds_the_windows_of_the_frames_recorded_for_it(tmp_path):
    """data.table_steps frames of tracker play (data.table_seed), never trained on, add their windows to the table of
    the ball's steps that dreams look up, after loop 2, in both checkpoints; the training frames' windows stay in it."""
    cfg = W.make_config([*W.SMALL_BUDGET, "ae.steps=10", "pred.steps=10", "tune.steps=5", "data.table_steps=300",
                         f"experiment.out_dir={tmp_path}/runs", f"experiment.assets_dir={tmp_path}/a"])
    s = W.train_and_evaluate(cfg, progress=False)
    p = W.WorldModel.load(Path(s["run_dir"]) / "checkpoints" / "last.pt").predictor
    train, _, table = W.load_data(cfg, table=True)
    assert len(table) == 300 and not np.array_equal(table.frames[:50], train.frames[:50])
    own = W.Latents(W.WorldModel(cfg, train.num_actions), train, labels=W.object_labels(probe(train.frames)))
    keys, steps = W.table_rows(table)
    assert len(keys) > 50 and len(own.step_keys) > 50
    assert torch.equal(p.step_keys, torch.from_numpy(np.concatenate([own.step_keys, keys])))
    assert torch.equal(p.steps, torch.from_numpy(np.concatenate([own.steps, steps])))
    wm = W.WorldModel.load(Path(s["run_dir"]) / "checkpoints" / "best.pt")           # best.pt holds them too, and
    W.add_table(wm, (keys, steps))                                                   # a resumed run adds them once
    assert torch.equal(wm.predictor.step_keys, p.step_keys) and torch.equal(wm.predictor.steps, p.steps)
    assert W.load_data(W.make_config([*W.SMALL_BUDGET]), table=True)[2] is None          # data.table_steps=0


def test_resume_refuses_bad_input(tmp_path, tiny_cfg, trained):
    res = cli("--resume", str(tmp_path / "nope"), tmp=tmp_path)
    assert res.returncode == 2 and "not a run folder" in res.stderr and res.stderr.count("\n") == 1
    res = cli("--resume", str(tmp_path), "ae.steps=5", tmp=tmp_path)
    assert res.returncode == 2 and "takes no --config or overrides" in res.stderr
    # A checkpoint written by another config than the run's resolved_config.yaml: named, not loaded.
    run = W.Run.create(W.make_config([f"experiment.out_dir={tmp_path}/runs"], base=tiny_cfg))
    wm, _, _ = trained
    opt, sched = W.make_optimizer(tiny_cfg, "ae", wm.ae.parameters())
    other = W.make_config(["model.hidden=32"], base=run.cfg)
    W.WorldModel(other, 6).save(run.path / "checkpoints" / "last.pt", phase="ae", step=10,
                                optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                                rng={"torch": torch.get_rng_state()}, best=1.0)
    before = (run.path / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=r"another config \(model.hidden: 64 vs 32\)"):
        W.Run.reopen(run.path)
    assert (run.path / "checkpoints" / "last.pt").read_bytes() == before   # nothing damaged


@pytest.mark.parametrize("schedule", ["one_cycle", "cosine", "constant"])
def test_schedules(schedule):
    cfg = W.make_config([f"ae.schedule={schedule}", "ae.steps=100", "optim.lr=0.01"])
    opt, sched = W.make_optimizer(cfg, "ae", [torch.nn.Parameter(torch.zeros(1))])
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(0.01, rel=0.02)                   # optim.lr replaces ae.lr
    if schedule == "constant":
        assert lrs[0] == lrs[-1] == 0.01
    else:
        assert lrs[0] < 0.005 and lrs[-1] < 0.001 and np.argmax(lrs) in range(5, 15)  # warm up 10 %, then decay


def test_huber_loss_trains(tiny_cfg, train_data, val_data):
    cfg = W.make_config(["ae.loss=huber", "pred.loss=huber", "ae.steps=20", "pred.steps=20"], base=tiny_cfg)
    wm, ae_hist = W.train_autoencoder(cfg, train_data, val_data, progress=False)
    wm, pred_hist = W.train_predictor(cfg, wm, train_data, val_data, progress=False)
    assert ae_hist[-1]["val_loss"] < 0.5 * ae_hist[0]["val_loss"]
    for phase in ("pred", "tune"):      # on the probe's coordinates, then on the encoder's latents: each falls
        h = [r["pred_1step"] for r in pred_hist if r["phase"] == phase]
        assert len(h) >= 2 and h[-1] < h[0], phase                    # teacher-forced: what a few steps can learn
    x = torch.from_numpy(train_data.frames[:32])
    labels = torch.from_numpy(W.object_labels(probe(train_data.frames[:32])))
    mse, _ = W.ae_loss(wm.ae, x, labels, tiny_cfg.ae)
    hub, _ = W.ae_loss(wm.ae, x, labels, cfg.ae)
    assert hub < mse                                                    # Huber is below squared error above delta


def test_wandb_offline_logs_without_network(tmp_path):
    pytest.importorskip("wandb")
    res = cli(*FAST, "ae.steps=10", "pred.steps=10", "experiment.wandb.mode=offline",
              f"experiment.out_dir={tmp_path}/runs", f"experiment.assets_dir={tmp_path}/assets",
              env={"WANDB_SILENT": "true", "WANDB_API_KEY": ""}, tmp=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = (tmp_path / "runs").iterdir()
    logs = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert logs and logs[0].stat().st_size > 1000                      # metrics, images and videos recorded


def test_wandb_missing_package_says_so_once_and_trains(tmp_path):
    env = {"PYTHONPATH": str(tmp_path / "fake")}
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "wandb.py").write_text("raise ImportError('no wandb here')\n")
    res = cli(*FAST, "ae.steps=10", "pred.steps=10", "experiment.wandb.mode=online",
              f"experiment.out_dir={tmp_path}/runs", f"experiment.assets_dir={tmp_path}/assets", env=env, tmp=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stderr.count("W&B:") == 1 and "not installed" in res.stderr


def test_dataloader_workers_draw_the_same_batches(tiny_cfg, train_data, val_data):
    """Batch t comes from (seed, phase, t) alone: worker processes change nothing but who reads it."""
    hist = []
    for extra in ([], ["data.num_workers=1", "data.prefetch_factor=2"]):
        cfg = W.make_config(["ae.steps=6", "eval.val_every=3", *extra], base=tiny_cfg)
        _, h = W.train_autoencoder(cfg, train_data, val_data, progress=False)
        hist.append([r["val_loss"] for r in h])
    assert hist[0] == hist[1] and len(hist[0]) == 3


def test_returned_balls_are_found_and_drawn_more_often(tiny_cfg):
    """Frames whose ball moves toward the opponent (rare in random play) weigh 1 + returned_ball_weight."""
    from data.d4rl_frames import record
    from data.probe import RAM, probe, returned_ball
    data = record("Pong", 600, seed=5, policy="tracker")          # the tracker returns the ball
    left = returned_ball(probe(data.frames), data.episode)
    # Against the emulator: the RAM's ball x falls between the two frames (same episode, ball shown).
    x = data.ram[:, RAM["ball_x"]].astype(int)
    ram_left = np.r_[False, (np.diff(x) < 0) & (data.episode[1:] == data.episode[:-1])]
    assert 0.05 < left.mean() < 0.6
    assert (left & ram_left).sum() >= 0.95 * left.sum()            # what it calls returned is returned
    share = {}
    for k in (0.0, 3.0):
        cfg = W.make_config([f"ae.returned_ball_weight={k}", "ae.steps=200", "ae.batch_size=64"], base=tiny_cfg)
        batches = W.FrameBatches(cfg, data)
        idx = np.concatenate([batches.indices(t) for t in range(1, 201)])
        frames, labels = batches[7]
        assert np.array_equal(frames.numpy(), data.frames[batches.indices(7)])
        assert np.array_equal(labels.numpy(), W.object_labels(probe(frames.numpy())))   # each frame's own labels
        share[k] = left[idx].mean()
    q = left.mean()
    assert share[0.0] == pytest.approx(q, abs=0.03)
    assert share[3.0] == pytest.approx(4 * q / (1 + 3 * q), abs=0.03)


def test_the_pipeline_runs_from_a_script_without_a_main_guard(tmp_path):
    """Loop 2's first phase beside loop 1 runs in a fresh interpreter: a script that calls the pipeline at
    its top level runs once (a multiprocessing 'spawn' child re-ran it, and the phase failed)."""
    script = tmp_path / "mine.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nimport world_model as W\nprint('top level ran')\n"
                      f"cfg = W.make_config([*W.SMALL_BUDGET, 'experiment.out_dir={tmp_path}/runs', "
                      f"'experiment.assets_dir={tmp_path}/assets'])\nW.train_and_evaluate(cfg, progress=False)\n")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("top level ran") == 1
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "summary.json").is_file()
    assert [r["phase"] for r in rows(run / "metrics.csv")].count("pred") == 4     # the phase beside loop 1 ran
