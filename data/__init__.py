"""Frame sources for the world model (see data/d4rl_frames.py), and the errors users can fix."""
import argparse
import sys


class UsageError(ValueError):
    """Bad input a user can fix (a config value, a file, a game name): the command line prints it as
    one line and exits 2. Any other exception is a bug and keeps its traceback."""


class MissingInput(UsageError, FileNotFoundError):
    """A file or folder the user named (or the command needs) is not there."""


class Parser(argparse.ArgumentParser):
    """argparse whose own errors (a bad option, a missing value) are one line and exit 2, like a UsageError."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB): read at each phase's end, it bounds that phase. On Linux
    VmHWM: getrusage's ru_maxrss in a process started by fork + exec also holds its parent's size at the fork (a
    recording process started by the pipeline at ~490 MB reported 488 MB; its own peak was ~140 MB)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / 1024 / (1024 if sys.platform == "darwin" else 1)      # macOS reports bytes, Linux KB
