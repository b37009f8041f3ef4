"""How the training loops use the machine: CPU threads, mixed precision on a GPU, and data parallel
processes under torchrun (one process per rank, each a contiguous share of every batch; gradients
averaged by DistributedDataParallel, loss normalisers shared so that the ranks' averaged gradients are
the one-process ones: tests/test_distributed.py). In one fp32 process every helper is a no-op.

    torchrun --nproc_per_node=2 world_model.py [overrides]
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
import torch.nn as nn

from config import PHASES, Config, train_device
from data import UsageError


@contextlib.contextmanager
def one_thread(on: bool = True):
    """Run torch on one CPU thread inside. Small ops (the predictor's step, a batch-1 play step) are
    too small to split: on this 2-core CPU a predictor step took 42 ms on one thread and 80 ms on
    two; a play decode 1 ms against a median 9 ms (90th percentile 190 ms) on a busy machine."""
    n = torch.get_num_threads()
    if on:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class Precision:
    """Autocast (and, for fp16, loss scaling) on CUDA; a no-op in fp32."""

    def __init__(self, cfg: Config, dev: torch.device):
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision)
        self.dev = dev
        self.scaler = torch.amp.GradScaler("cuda") if cfg.train.precision == "fp16" else None

    def autocast(self):
        return torch.autocast(self.dev.type, dtype=self.dtype, enabled=self.dtype is not None)

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, sched, grad_clip: float) -> float:
        """One optimizer step; returns the gradient norm before clipping."""
        opt.zero_grad(set_to_none=True)
        params = [p for g in opt.param_groups for p in g["params"]]
        if self.scaler is None:
            loss.backward()
            norm = nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(opt)
            norm = nn.utils.clip_grad_norm_(params, grad_clip)
            self.scaler.step(opt)
            self.scaler.update()
        sched.step()
        return norm


def rank_world() -> tuple[int, int]:
    """(this process's rank, number of processes): (0, 1) unless torchrun started a process group."""
    d = torch.distributed
    return (d.get_rank(), d.get_world_size()) if d.is_available() and d.is_initialized() else (0, 1)


def start_distributed(cfg: Config) -> bool:
    """Under torchrun (WORLD_SIZE > 1): join the process group, nccl with one GPU per process or gloo on
    CPU; a rank that stops answering fails the others' collectives after DIST_TIMEOUT_S. Returns whether."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    from datetime import timedelta
    cuda = train_device(cfg).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))     # "cuda" is now this process's GPU
    torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=DIST_TIMEOUT_S))
    world = torch.distributed.get_world_size()
    for phase in (p for p in PHASES if hasattr(getattr(cfg, p), "batch_size")):   # tune uses pred's batches
        if getattr(cfg, phase).batch_size % world:
            raise UsageError(f"{phase}.batch_size={getattr(cfg, phase).batch_size} does not split into {world} "
                             f"processes: use a multiple of {world}")
    return True


DIST_TIMEOUT_S = 600      # longer than any validation: the other ranks wait for rank 0's in their next step


def data_parallel(module: nn.Module, dev: torch.device, unused: bool = False) -> nn.Module:
    """`module` wrapped in DistributedDataParallel when there are several processes (its gradients averaged
    over them at backward), else itself."""
    if rank_world()[1] == 1:
        return module
    return nn.parallel.DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None,
                                               find_unused_parameters=unused)


def shared(x: torch.Tensor) -> torch.Tensor:
    """The mean over the processes of a (no-grad) count, e.g. a loss's normaliser: with it, each rank's
    loss is sum(its share) / shared(count) and the ranks' averaged gradients are the one-process ones."""
    x = x.detach()
    if rank_world()[1] > 1 and torch.is_grad_enabled():     # training; rank 0's validation runs without grad
        x = x.clone()
        torch.distributed.all_reduce(x)
        x /= rank_world()[1]
    return x


def my_part(x: torch.Tensor | np.ndarray, part: tuple[int, int] | None = None) -> torch.Tensor | np.ndarray:
    """This rank's contiguous share of a global batch (all of it in one process); part: (rank, world)
    when known beforehand (a DataLoader worker has no process group)."""
    rank, world = part or rank_world()
    n = len(x) // world
    return x[rank * n:(rank + 1) * n]

