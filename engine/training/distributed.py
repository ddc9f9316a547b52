"""Data-parallel training over several processes (GPUs or machines) with ``torch.distributed``.

``torchrun`` starts one process per GPU (or CPU worker) and tells each its place through the
environment: ``RANK`` (0 .. ``WORLD_SIZE - 1`` over all machines), ``WORLD_SIZE``, ``LOCAL_RANK``
(its index on its machine: the CUDA device it uses), ``MASTER_ADDR`` and ``MASTER_PORT`` (where
the processes meet). :func:`process_group` joins them (NCCL on CUDA, gloo on the CPU) for the
duration of a run; the :class:`~.trainer.Trainer` then wraps the model in
``DistributedDataParallel`` and gives each process its share of every global batch.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import GAGAvatarError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""The environment torchrun sets for each process (the rank variables and the rendezvous point)."""


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun launch: ``rank`` of ``world_size`` processes in all,
    ``local_rank`` on its machine."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes logs, checkpoints and exports and prints progress."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device of this process: ``cuda:LOCAL_RANK`` for a CUDA ``device``, else ``device``."""
        if device.type != "cuda":
            return device
        if device.index is not None:
            raise GAGAvatarError(f"train.device = \"{device}\" pins one GPU, but under torchrun each process uses "
                                 f"the GPU of its LOCAL_RANK: set train.device = \"cuda\" or \"auto\"")
        return torch.device("cuda", self.local_rank)


def torchrun_launch(env: Mapping[str, str] = os.environ) -> Launch | None:
    """The torchrun launch this process belongs to, from ``env``; None when no rank variable is set."""
    if not any(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return None
    missing = [k for k in TORCHRUN_VARS if k not in env]
    if missing:
        raise GAGAvatarError(f"{', '.join(k for k in TORCHRUN_VARS[:3] if k in env)} set but not "
                             f"{', '.join(missing)}: launch with torchrun (see docs/TRAINING.md), or unset them")
    try:
        launch = Launch(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]))
    except ValueError as err:
        raise GAGAvatarError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({err}): launch with torchrun") \
            from err
    if not 0 <= launch.rank < launch.world_size or launch.local_rank < 0:
        raise GAGAvatarError(f"RANK={launch.rank} is outside WORLD_SIZE={launch.world_size} (or LOCAL_RANK < 0): "
                             f"launch with torchrun")
    return launch


@contextmanager
def process_group(device: torch.device) -> Iterator[Launch | None]:
    """Under torchrun: join this process to the others for the block (backend ``nccl`` for a CUDA
    ``device``, with ``cuda:LOCAL_RANK`` made current; ``gloo`` on the CPU) and leave at its end
    (``destroy_process_group``). Not under torchrun: nothing; the block gets None."""
    launch = torchrun_launch()
    if launch is None:
        yield None
        return
    if not dist.is_available():
        raise GAGAvatarError("this PyTorch build has no torch.distributed: train in one process (without torchrun)")
    device = launch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    try:
        yield launch
    finally:
        dist.destroy_process_group()


def joined() -> Launch | None:
    """The launch of this process when it is in a process group; None for a single-process run."""
    launch = torchrun_launch()
    if launch is not None and not dist.is_initialized():
        raise GAGAvatarError("launched by torchrun but not joined to the other processes: run `gagavatar train`, "
                             "or train inside `with engine.training.distributed.process_group(device):`")
    return launch


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over all processes (a new tensor; every process gets it)."""
    total = values.clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any process (every process gets the answer)."""
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
