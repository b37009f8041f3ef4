"""The real CLI and the real notebook, run end to end on the small budget."""
import subprocess
import sys

import imageio.v3 as iio
import numpy as np

import world_model as W
from conftest import ROOT, execute_notebook


def test_cli_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "world_model.py", *W.SMALL_BUDGET, f"experiment.out_dir={out}/runs",
           f"experiment.assets_dir={out}/assets"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "held-out objects" in res.stdout and "autoencoder" in res.stdout
    (run,) = (out / "runs").iterdir()
    png = iio.imread(run / "assets" / "real_vs_recon.png")        # every run keeps its own pictures
    assert png.shape[0] >= 300 and png.shape[1] >= 1200           # 8 frames, ball-visible size
    gif = iio.imread(run / "assets" / "pong_fake.gif", index=None)
    assert gif.shape[0] == 20                                      # rollout_frames of the small budget
    assert not (out / "assets").exists()                           # a small run leaves the README's pictures alone
    assert f"pictures          {run / 'assets'}" in res.stdout
    assert (run / "resolved_config.yaml").is_file() and (run / "checkpoints" / "best.pt").is_file()
    # The run folder of the README: metrics every log_every steps, a validation row (with pictures) every val_every.
    import csv
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    # Loop 2's first phase ran beside loop 1 in a second process; its rows follow loop 1's, then the tuning's.
    assert [(r["phase"], int(r["step"])) for r in rows] == [(p, s) for p in ("ae", "pred") for s in (10, 20, 30, 40)] + [
        ("tune", 10), ("tune", 20)]
    assert all(float(r["loss"]) > 0 and float(r["samples_per_s"]) > 0 and float(r["lr"]) >= 0 for r in rows)
    val = list(csv.DictReader(open(run / "val_metrics.csv")))
    assert [(r["phase"], int(r["step"])) for r in val] == [(p, s) for p in ("ae", "pred") for s in (0, 20, 40)] + [
        ("tune", 0), ("tune", 20)]
    assert all(0 <= float(r["recon_ball"]) <= 1 for r in val[:3]) and all(float(r["pred_1step"]) > 0 for r in val[3:])
    assert all(0 <= float(r["pred_ball"]) <= 1 for r in val[6:])      # the tuning's rows score decoded predictions
    # Pictures need the trained autoencoder: loop 1 and the tuning have them, the phase beside loop 1 none.
    assert sorted(f.name for f in (run / "images").iterdir()) == sorted(
        [f"ae_step{s:06d}.png" for s in (0, 20, 40)] + [f"tune_step{s:06d}.png" for s in (0, 20)])
    gifs = sorted((run / "videos").glob("*.gif"))
    assert [g.name for g in gifs] == [f"tune_step{s:06d}.gif" for s in (0, 20)]
    assert iio.imread(gifs[-1], index=None).shape[0] == 20            # eval.video_frames of the small budget
    wm = W.WorldModel.load(run / "checkpoints" / "last.pt")
    assert wm.cfg.ae.steps == 40 and wm.cfg.model.width == 16
    frames = np.zeros((wm.context, 84, 84), np.uint8) + 87
    assert wm.rollout(frames, [0, 2, 3]).shape == (3, 84, 84)


def test_cli_bad_override_is_one_line_and_nonzero(tmp_path):
    res = subprocess.run([sys.executable, "world_model.py", "ae.stepz=3", f"experiment.out_dir={tmp_path}/runs"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "stepz" in res.stderr
    assert not (tmp_path / "runs").exists()                       # nothing written before the error


def test_notebook_executes_end_to_end(tmp_path):
    import nbformat
    nb = nbformat.read(ROOT / "train.ipynb", as_version=4)
    execute_notebook(nb, tmp_path)
    (run,) = (r for r in (tmp_path / "runs").iterdir() if not r.name.endswith("_eval"))
    assert (run / "assets" / "real_vs_recon.png").is_file()
    assert iio.imread(run / "assets" / "pong_fake.gif", index=None).shape[0] == 20
    assert not (tmp_path / "assets").exists()                      # the smoke budget is not the default recipe
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3   # frames, loss curves, recon strip
    text = "".join(o.get("text", "") for o in outputs)
    assert "reconstruction: ball kept" in text and "(30, 84, 84) uint8" in text
