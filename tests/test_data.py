import numpy as np
import pytest

from data.d4rl_frames import FrameData, record, record_sets


def test_record_is_real_seeded_pong(train_data):
    d = train_data
    assert d.frames.dtype == np.uint8 and d.frames.shape == (400, 84, 84)
    assert d.actions.dtype == np.int64 and d.num_actions == 6 and d.ram.shape == (400, 128)
    assert 80 < np.median(d.frames) < 95                      # Pong's grey background (~87)
    assert len(np.unique(d.actions)) > 3                      # the random policy really acts
    again = record("Pong", steps=50, seed=0)
    assert np.array_equal(again.frames, d.frames[:50]) and np.array_equal(again.actions, d.actions[:50])
    other = record("Pong", steps=50, seed=1)
    assert not np.array_equal(other.frames, d.frames[:50])


def test_episode_boundaries_are_kept():
    d = record("Pong", steps=1800, seed=3)  # random play loses an episode in ~900 steps
    assert d.episode[-1] >= 1, "expected at least one episode end in 1800 random steps"
    for sl in d.episode_slices():
        assert d.actions[sl.stop - 1] == 0 or sl.stop == len(d)  # an episode's last frame has no action
    starts = d.starts(5)
    assert np.all(d.episode[starts] == d.episode[starts + 4])
    cut = np.flatnonzero(np.diff(d.episode))[0]  # last frame of episode 0
    assert cut - 4 in starts and cut - 3 not in starts


def test_unknown_game_names_close_matches():
    with pytest.raises(ValueError, match="unknown Atari game 'Pongg'.*Pong"):
        record("Pongg", steps=10)


def test_recordings_shared_over_processes_are_the_ones_played_here():
    sets = [("Pong", 90, 4, "random+tracker+sticky"), ("Pong", 40, 7, "random")]
    par = record_sets(sets, workers=2)                                      # some parts in a second process
    for d, s in zip(par, sets):
        ref = record(*s)                                                    # every part here, one after another
        for k in ("frames", "actions", "episode", "ram", "rewards", "terminated", "truncated"):
            assert np.array_equal(getattr(d, k), getattr(ref, k)), k
    assert len(par[0]) == 90 and par[0].episode.max() == 2                  # three parts, episodes renumbered
    with pytest.raises(ValueError, match="unknown policy 'smart'"):         # before any process starts
        record_sets([("Pong", 10, 0, "random+smart")], workers=2)


def test_a_recording_in_the_background_is_the_one_played_here_at_the_lowest_priority():
    """Recording (the step table's frames, recorded while loop 2 trains): the same frames as record_sets, from a
    process at nice 19, its peak memory read back, its folder gone after; a wrong policy stops it before it starts."""
    import os
    from data.d4rl_frames import Recording
    sets = [("Pong", 60, 5, "tracker"), ("Pong", 30, 6, "random+tracker")]
    rec = Recording(sets)
    if hasattr(os, "getpriority"):
        assert os.getpriority(os.PRIO_PROCESS, rec.child.proc.pid) == 19
    folder = rec.child.dir
    out = rec.result()
    for d, ref in zip(out, record_sets(sets, workers=1)):
        assert np.array_equal(d.frames, ref.frames) and np.array_equal(d.episode, ref.episode)
    assert 10 < rec.peak_rss_mb < 250 and not folder.exists()    # its own peak, not this process's size at the fork
    with pytest.raises(ValueError, match="unknown policy 'smart'"):
        Recording([("Pong", 10, 0, "smart")])


def test_framedata_rejects_bad_arrays():
    f = np.zeros((4, 84, 84), np.uint8)
    z = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="uint8"):
        FrameData(f.astype(np.float32), z, z, None, "Pong", 6)
    with pytest.raises(ValueError, match="empty"):
        FrameData(f[:0], z[:0], z[:0], None, "Pong", 6)
    with pytest.raises(ValueError, match="actions must lie"):
        FrameData(f, z + 6, z, None, "Pong", 6)
    with pytest.raises(ValueError, match="non-decreasing"):
        FrameData(f, z, np.array([0, 1, 0, 1]), None, "Pong", 6)


def test_sticky_play_holds_actions_and_rests_against_the_walls():
    from data.probe import UP, probe
    d = record("Pong", steps=600, seed=5, policy="sticky")
    runs = np.diff(np.flatnonzero(np.diff(d.actions) != 0))                # lengths of runs of one action
    assert runs.mean() > 4                                                  # uniform play: ~1.2
    again = record("Pong", steps=600, seed=5, policy="sticky")
    assert np.array_equal(again.actions, d.actions)                         # seeded
    p = probe(d.frames)
    up = np.isin(d.actions, [UP, 4])                                        # RIGHT, RIGHTFIRE: the paddle goes up
    held = np.array([up[t - 3:t + 1].all() for t in range(3, len(d))])
    top = p["player"][3:] & (p["player_y"][3:] - p["player_rows"][3:] / 2 <= 14)
    assert (held & top).sum() >= 30, "sticky play should show the paddle at the top wall with UP held"  # uniform: 5


def test_a_fresh_process_removes_the_folders_a_killed_one_left(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from data.d4rl_frames import FreshProcess, sweep_dead
    root = Path(__file__).resolve().parents[1]
    # A parent killed outright (SIGKILL) while its helper runs: nothing of it can remove the helper's folder.
    code = (f"import os, sys; sys.path.insert(0, {str(root)!r}); from data.d4rl_frames import FreshProcess; "
            "p = FreshProcess('data.d4rl_frames', '_helper'); print(p.dir, flush=True); os.kill(os.getpid(), 9)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == -signal.SIGKILL
    left = Path(run.stdout.strip())
    assert left.is_dir() and left.name.startswith("helper-") and left.parent == Path(tempfile.gettempdir())
    mine = Path(tempfile.mkdtemp(prefix=f"helper-{os.getpid()}-"))     # a living process's folder stays
    p = FreshProcess("data.d4rl_frames", "_helper")
    try:
        assert not left.exists() and mine.is_dir() and p.dir.is_dir()
    finally:
        p.stop()
        mine.rmdir()
    # Only folders of that kind, named with a process id, are touched.
    for n in ("helper-notapid-x", "beside-1-x", "helper-1"):
        (tmp_path / n).mkdir()
    assert sweep_dead(tmp_path, "helper") == [] and len(list(tmp_path.iterdir())) == 3
