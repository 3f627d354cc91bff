"""Data-parallel training under torchrun (env RANK / WORLD_SIZE / LOCAL_RANK).

The interaction loop calls ``encode`` once and ``refine`` N times per step, which does not fit DDP's
one-forward-per-backward hook protocol, so gradients are averaged explicitly with one coalesced
``all_reduce`` per optimizer step (numerically what DDP does). nccl on CUDA, gloo on CPU; each rank
draws a disjoint shard of the epoch's samples; only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "shard", "average_gradients", "broadcast_parameters",
           "all_reduce_sum", "any_flag", "barrier", "cleanup"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join the process group torchrun describes; a no-op (world size 1) without those variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    here = False
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        here = True
    return DistInfo(rank, world, local, backend, here)


def shard(items: Sequence, info: DistInfo) -> list:
    """This rank's share: every world_size-th item starting at rank (DistributedSampler style)."""
    return list(items[info.rank :: info.world_size]) if info.enabled else list(items)


def broadcast_parameters(model: torch.nn.Module, info: DistInfo) -> None:
    """Make every rank start from rank 0's weights."""
    if not info.enabled:
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(params: Sequence[torch.nn.Parameter], info: DistInfo) -> None:
    """Average the gradients over ranks in one flat all_reduce (missing grads count as zeros)."""
    if not info.enabled:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                      for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    off = 0
    for p in params:
        n = p.numel()
        g = flat[off : off + n].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        off += n


def all_reduce_sum(values: Sequence[float], info: DistInfo, device: str = "cpu") -> list[float]:
    if not info.enabled:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_flag(flag: bool, info: DistInfo, device: str = "cpu") -> bool:
    """True on every rank if it is True on any rank (stop requests must be agreed on)."""
    if not info.enabled:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()
