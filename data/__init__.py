"""Frame sources for the world model (see data/d4rl_frames.py)."""
