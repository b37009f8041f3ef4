"""Play inside the world model: the session headless, the notebook widget (nbclient), the desktop window (Xvfb)."""
import os
import re
import shutil
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import ROOT, execute_notebook

from data.probe import probe
from play import PlaySession, bench_play, play_desktop

SCRIPT = [2, 2, 2, 3, 0, 1, 3, 3, 2, 0, 0, 2]  # Up x3, Down, Stay, Fire, Down x2, Up, Stay x2, Up


@pytest.fixture(scope="module")
def checkpoint(trained, tmp_path_factory):
    """The tiny trained model as a run folder on disk, as the CLI and the notebook leave it."""
    out = tmp_path_factory.mktemp("play")
    trained[0].save(out / "runs" / "run" / "checkpoints" / "last.pt")
    return out


def test_session_shapes_and_history(trained):
    wm, _, _ = trained
    s = PlaySession(wm, real=True, seed=0)
    assert s.controls == {"Up": 2, "Down": 3, "Stay": 0, "Fire": 1}   # Pong's RIGHT moves the paddle up
    assert s.context.shape == (wm.context, 84, 84) and s.context.dtype == np.uint8
    assert s.t == 0 and np.array_equal(s.frame, s.context[-1])
    for a in ("Up", 3, "Fire"):
        f = s.step(a)
        assert f.shape == (84, 84) and f.dtype == np.uint8
        assert s.real_frame.shape == (84, 84) and s.real_frame.dtype == np.uint8
    assert s.t == 3 and len(s.dream_frames) == len(s.real_frames) == 4 and s.actions_taken == [2, 3, 1]
    assert s.render(3).shape == (252, 3 * 252 + 8)                        # dream | real | |difference|
    dream_only = PlaySession(wm, real=False, seed=0)
    dream_only.step("Down")
    assert dream_only.real_frame is None and dream_only.render(2).shape == (168, 168)
    with pytest.raises(ValueError, match="unknown control"):
        s.step("Jump")
    s.close()


def test_steps_equal_the_open_loop_rollout_and_are_deterministic(trained):
    """One predictor call + one decode per step gives exactly WorldModel.rollout's dream."""
    wm, _, _ = trained
    a, b = PlaySession(wm, real=True, seed=3), PlaySession(wm, real=True, seed=3)
    for act in SCRIPT:
        a.step(act), b.step(act)
    assert np.array_equal(np.stack(a.dream_frames), np.stack(b.dream_frames))
    assert np.array_equal(np.stack(a.real_frames), np.stack(b.real_frames))
    ref = wm.rollout(a.context, SCRIPT, context_actions=[0] * (wm.context - 1))   # the start took NOOPs
    assert np.array_equal(np.stack(a.dream_frames[1:]), ref)
    assert not np.array_equal(ref, wm.rollout(a.context, [3] * len(SCRIPT)))     # the actions matter
    a.close(), b.close()


def test_resync_restarts_the_dream_from_the_real_frames(trained):
    wm, _, _ = trained
    K = wm.context
    s = PlaySession(wm, real=True, seed=0)
    for act in SCRIPT:
        s.step(act)
    real_last = np.stack(s.real_frames[-K:])
    s.resync()
    assert np.array_equal(s.context, real_last)
    assert np.array_equal(s.frame, real_last[-1]) and np.array_equal(s.real_frame, real_last[-1])
    assert s.t == len(SCRIPT) + 1 and s.t in s.resyncs
    s.step("Down")
    ref = wm.rollout(real_last, [3], context_actions=SCRIPT[-(K - 1):])   # the actions taken at those frames
    assert np.array_equal(s.frame, ref[0])
    s.reset()
    assert s.t == 0 and s.resyncs == [0]
    s.close()


def test_session_from_a_recording(trained, val_data):
    wm, _, _ = trained
    start = int(val_data.starts(wm.context)[10])
    s = PlaySession(wm, real=False, data=val_data, start=start)
    assert np.array_equal(s.context, val_data.frames[start:start + wm.context])
    s.step("Up")
    ref = wm.rollout(s.context, [2], val_data.actions[start:start + wm.context - 1])
    assert np.array_equal(s.frame, ref[0])
    with pytest.raises(RuntimeError, match="real game"):
        s.resync()
    with pytest.raises(ValueError, match="real=False"):
        PlaySession(wm, real=True, data=val_data)


def test_gif_export(trained, tmp_path):
    wm, _, _ = trained
    s = PlaySession(wm, real=True, seed=0)
    for act in SCRIPT[:5]:
        s.step(act)
    path = s.save_gif(tmp_path / "play.gif", fps=15)
    gif = iio.imread(path, index=None)
    assert gif.shape[:3] == (6, 252, 764)                                  # frame 0 + 5 steps, scale 3
    grey = gif[..., 0] if gif.ndim == 4 else gif
    below_labels = slice(15, 252)
    assert np.array_equal(grey[4, below_labels, :252], s.dream_frames[4].repeat(3, 0).repeat(3, 1)[below_labels])
    assert np.array_equal(grey[4, below_labels, 256:508], s.real_frames[4].repeat(3, 0).repeat(3, 1)[below_labels])
    s.close()


def test_bench_reports_milliseconds_per_step(trained):
    r = bench_play(trained[0], steps=10)
    assert r["steps"] == 10 and 0 < r["step_ms"] < r["total_ms"] < 1000


def test_notebook_play_cell_steps_on_button_presses(checkpoint):
    """The notebook's config cell and play cells, then a scripted cell that presses the buttons."""
    import nbformat
    pytest.importorskip("ipywidgets")
    nb = nbformat.read(ROOT / "train.ipynb", as_version=4)
    config = next(c for c in nb.cells if c.cell_type == "code" and "WM_SMOKE" in c.source)
    play = [c for c in nb.cells if c.get("id", "").startswith("play-")]
    assert [c.cell_type for c in play] == ["markdown", "code"]
    press = nbformat.v4.new_code_cell(
        "s, image = player.session, player.children[0]\n"
        "t0, png0 = s.t, image.value\n"
        "player.buttons['Up'].click(); player.buttons['Up'].click()\n"
        "player.ticker.value += 1                      # one tick of the Play ticker, holding Up\n"
        "print('PRESSED', t0, s.t, s.actions_taken, image.value != png0)\n"
        "player.buttons['Resync'].click(); player.buttons['Save GIF'].click()\n"
        "print('RESYNCED', s.t, s.resyncs)")
    nb.cells = [config, *play, press]                  # in memory only: train.ipynb is not rewritten
    execute_notebook(nb, checkpoint, timeout=120)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in play[1].outputs)
    text = "".join(o.get("text", "") for o in outputs)
    assert "PRESSED 0 3 [2, 2, 2] True" in text                 # two clicks + one tick, all Up; the image changed
    assert "RESYNCED 4 [0, 4]" in text
    assert iio.imread(checkpoint / "runs" / "run" / "assets" / "play.gif", index=None).shape[0] == 5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the DISPLAY check is Linux's")
def test_desktop_without_a_display_says_so_in_one_line(checkpoint, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert play_desktop(checkpoint / "runs" / "run" / "checkpoints" / "last.pt") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no display" in err and "xvfb-run" in err


@pytest.fixture
def xvfb():
    """A virtual X display on a free number (Xvfb picks it), for the desktop window."""
    if not shutil.which("Xvfb"):
        pytest.skip("Xvfb not installed (Debian: apt-get install -y xvfb)")
    if not shutil.which("xdotool"):
        pytest.skip("xdotool not installed (Debian: apt-get install -y xdotool)")
    pytest.importorskip("tkinter", reason="this Python has no Tk (Debian's python3: apt-get install -y python3-tk)")
    x = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        yield ":" + x.stdout.readline().decode().strip()
    finally:
        x.terminate()
        x.wait(10)


def test_desktop_window_steers_with_a_real_key_press(checkpoint, xvfb, tmp_path):
    env = dict(os.environ, DISPLAY=xvfb)

    def xdo(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True, timeout=20, check=False)

    ckpt, gif = checkpoint / "runs" / "run" / "checkpoints" / "last.pt", tmp_path / "desk.gif"
    code = ("import sys; from play import play_desktop; "
            "sys.exit(play_desktop(sys.argv[1], max_steps=600, gif=sys.argv[2]))")
    p = subprocess.Popen([sys.executable, "-c", code, str(ckpt), str(gif)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, wid = time.time() + 60, ""
        while not wid and p.poll() is None and time.time() < deadline:
            wid = xdo("search", "--onlyvisible", "--name", "Neural-Atari Regen").stdout.strip()
            time.sleep(0.2)
        assert wid, f"no window appeared: {p.stderr.read() if p.poll() is not None else 'timeout'}"
        xdo("windowfocus", "--sync", wid)
        xdo("keydown", "Up")                                 # held for ~7 steps at 15 fps
        time.sleep(0.5)
        xdo("keyup", "Up")
        shots = []
        from PIL import ImageGrab, features
        if features.check("xcb"):
            geo = dict(re.findall(r"(\w+)=(\d+)", xdo("getwindowgeometry", "--shell", wid).stdout))
            x, y, w, h = (int(geo[k]) for k in ("X", "Y", "WIDTH", "HEIGHT"))
            shots = [np.asarray(ImageGrab.grab((x, y, x + w, y + h), xdisplay=xvfb).convert("L")) for _ in range(3)]
        xdo("key", "Escape")
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err[-2000:]
    m = re.search(r"played (\d+) steps.*Up (\d+)", out)
    assert m and 0 < int(m[2]) < int(m[1]) < 600, out                  # the Up key reached the game; Esc ended it
    frames = iio.imread(gif, index=None)
    frames = frames[..., 0] if frames.ndim == 4 else frames
    assert len(frames) == int(m[1]) + 1
    player_y = probe(frames[:, ::3, 256::3][:, :84, :84])["player_y"]   # the real game's panel
    assert np.nanmin(player_y) < player_y[0] - 3                         # the paddle went up
    if shots:  # the window shows the session's frames, pixel for pixel
        assert any(np.array_equal(shot, f) for shot in shots for f in frames)
