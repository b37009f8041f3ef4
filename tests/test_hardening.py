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
