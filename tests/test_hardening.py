"""No silent failures: runs that never collide, finished runs left alone, commands that say what they use,
an API that refuses what it cannot read in one clear line."""
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import world_model as W


def test_runs_started_in_the_same_second_get_their_own_folders(tiny_cfg, tmp_path, monkeypatch):
    cfg = W.make_config([f"experiment.out_dir={tmp_path}/runs"], base=tiny_cfg)
    monkeypatch.setattr(W.time, "strftime", lambda *a: "20261126-000000")     # everyone starts in the same second
    made, errors = [], []

    def start():
        try:
            made.append(W.Run.create(cfg).path)
        except Exception as e:   # noqa: BLE001 - the race is what this test looks for
            errors.append(e)
    threads = [threading.Thread(target=start) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(set(made)) == 8
    assert all((p / "resolved_config.yaml").is_file() for p in made)
    # The race itself, made certain: another process creates the folder between a check and the mkdir.
    monkeypatch.setattr(Path, "exists", lambda self: False)
    assert W.Run.create(cfg).path.name == "20261126-000000_pong-9"


def test_resume_of_a_finished_run_says_so_and_rewrites_nothing(tiny_cfg, tmp_path, capsys):
    run = W.Run.create(W.make_config([f"experiment.out_dir={tmp_path}/runs"], base=tiny_cfg))
    run.finish({"val_pred_1step": float("nan"), "times_s": {"total": 1.5}, "ball": np.float32(0.25)})
    summary = run.path / "summary.json"
    before, mtime = summary.read_bytes(), summary.stat().st_mtime_ns
    assert json.loads(before, parse_constant=lambda c: pytest.fail(f"{c} is not JSON")) == {
        "val_pred_1step": None, "times_s": {"total": 1.5}, "ball": 0.25}
    time.sleep(0.01)
    assert W.main(["--resume", str(run.path)]) == 0
    assert "is complete" in capsys.readouterr().out
    assert summary.read_bytes() == before and summary.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoints", "images", "resolved_config.yaml",
                                                          "summary.json", "videos"]


def test_commands_name_the_checkpoint_they_use_on_their_first_line(trained, tmp_path, capsys):
    old, new = (tmp_path / "runs" / n / "checkpoints" / "last.pt" for n in ("a_cli", "b_notebook"))
    trained[0].save(old)
    trained[0].save(new)
    os.utime(old, (time.time() - 60, time.time() - 60))
    assert W.which_checkpoint(None, tmp_path / "runs", "last.pt") == new
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"checkpoint {new} (run b_notebook, written ") and "--checkpoint picks another" in line
    import play
    assert play.main(["--checkpoint", str(old), "--bench", "--no-real"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"checkpoint {old} (run a_cli") and "step_ms" in json.loads(out[-1])


@pytest.mark.parametrize("actions, msg", [
    (None, "got NoneType"), ("up", "got str"), ([[2, 3]], r"got int64 \(1, 2\)"), ([object()], "got object"),
    ([2.0, 3.0], "got float64"), ([True], "got bool"), ([7], r"must lie in \[0, 6\)")])
def test_rollout_refuses_what_is_not_a_list_of_actions_in_one_line(trained, val_data, actions, msg):
    wm = trained[0]
    with pytest.raises(W.UsageError, match=msg):
        wm.rollout(val_data.frames[:wm.context], actions)


def test_rollout_of_no_actions_is_no_frames(trained, val_data):
    wm = trained[0]
    for none in ([], (), np.array([], np.int64)):
        out = wm.rollout(val_data.frames[:wm.context], none)
        assert out.shape == (0, 84, 84) and out.dtype == np.uint8


def test_another_game_trains_and_evaluates_on_pixels_alone(tmp_path, capsys):
    """Breakout end to end: refused without data.game (the message says which), then trained with
    it; pixel figures only, pictures named after the game, eval on random play, no empty folders."""
    from data.d4rl_frames import record_dataset
    src = record_dataset("Breakout", 1500, tmp_path / "breakout", num_envs=1, shard_steps=1500, progress=False)
    runs = tmp_path / "runs"
    common = [*W.SMALL_BUDGET, f"data.source={src}", "data.val_fraction=0.3", f"experiment.out_dir={runs}"]
    assert W.main(common) == 2
    assert "train on this one with data.game=Breakout" in capsys.readouterr().err
    assert W.main([*common, "data.game=Breakout", "eval.rollout_frames=400"]) == 2       # too long: said before training
    assert "no held-out episode holds 404 frames" in capsys.readouterr().err and not runs.exists()
    assert W.main([*common, "data.game=Breakout"]) == 0
    out = capsys.readouterr().out
    assert "objects           none measured" in out and "ball" not in out
    (run,) = runs.iterdir()
    assert sorted(p.name for p in (run / "assets").iterdir()) == ["breakout_fake.gif", "dream_strip.png",
                                                                  "real_vs_recon.png"]
    s = json.loads((run / "summary.json").read_text())
    assert s["game"] == "Breakout" and set(s["reconstruction"]) == {"frames", "mse"}
    assert "const_velocity" not in s["open_loop"] and "model" not in s["dream"]
    small = [o for o in W.SMALL_BUDGET if o.startswith("heldout.")]
    ckpt = str(run / "checkpoints" / "best.pt")
    assert W.main(["eval", "--checkpoint", ckpt, *small, "heldout.steps=800", f"experiment.out_dir={tmp_path}/eval"]) == 0
    (ev,) = (tmp_path / "eval").iterdir()
    m = json.loads((ev / "metrics.json").read_text())
    assert m["data"]["source"] == "recorded now: seed 1234, policy random"      # the tracker plays Pong only
    assert set(m["open_loop"]["model"]) == {"mse", "psnr", "ssim", "mse_mean"}
    assert sorted(p.name for p in (ev / "plots").iterdir()) == ["mse_vs_horizon.png"]
    # A measurement that cannot run leaves no folder behind.
    capsys.readouterr()
    assert W.main(["eval", "--checkpoint", ckpt, *small, "heldout.steps=300", "heldout.horizon=500",
                   f"experiment.out_dir={tmp_path}/eval2"]) == 2
    assert "no held-out episode holds" in capsys.readouterr().err
    assert not (tmp_path / "eval2").exists() or not any((tmp_path / "eval2").iterdir())


def test_training_episodes_too_short_for_the_predictor_are_refused_before_training(tmp_path, capsys):
    """Said before loop 1, not after it (loop 2's first phase may be training in another process by then)."""
    runs = tmp_path / "runs"
    assert W.main([*W.SMALL_BUDGET, "pred.unroll=500", f"experiment.out_dir={runs}"]) == 2
    assert "no training episode holds 504 consecutive frames" in capsys.readouterr().err and not runs.exists()
