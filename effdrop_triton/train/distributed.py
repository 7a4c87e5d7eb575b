"""What ``effdrop-train`` needs from ``torch.distributed``: the process group torchrun describes,
sums over ranks, rank 0's tensors for everyone, and an evaluation sampler without padding."""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator, List

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(use_cuda: bool) -> DistInfo:
    """Join the process group when torchrun (or any launcher setting ``WORLD_SIZE``/``RANK``/
    ``LOCAL_RANK``/``MASTER_ADDR``) started more than one process: NCCL on GPUs, gloo on CPUs."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return info


def close_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``tensor`` summed over the ranks (in place; returned for chaining)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on some rank: ranks must stop at the same step."""
    if not info.enabled:
        return flag
    return bool(all_reduce_sum(torch.tensor([int(flag)], device=device), info).item())


def broadcast_state(module: nn.Module, info: DistInfo, buffers_only: bool = False) -> None:
    """Copy rank 0's buffers (and parameters unless ``buffers_only``) of ``module`` to every rank."""
    if not info.enabled:
        return
    tensors = list(module.buffers()) if buffers_only else list(module.state_dict().values())
    for tensor in tensors:
        dist.broadcast(tensor, src=0)


def gather_objects(obj, info: DistInfo) -> List:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects)."""
    if not info.enabled:
        return [obj]
    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class ShardSampler(Sampler):
    """Indices ``rank, rank + world_size, ...`` of a data set, in order and without padding, so that
    metrics summed over ranks count every sample exactly once (``DistributedSampler`` pads the
    shards to equal length with repeated samples, which would count some twice)."""

    def __init__(self, length: int, info: DistInfo):
        self.indices = range(info.rank, length, info.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
