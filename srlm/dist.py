"""The few torch.distributed helpers the CLIs share (python or torchrun, CPU or GPU).

Under `torchrun`, RANK / WORLD_SIZE / LOCAL_RANK are set in the environment; without it we are a
single process and nothing here touches torch.distributed. Backends: nccl on GPU, gloo on CPU.

    rank, world_size, device = init_distributed()
    mine = shard(items, rank, world_size)          # every world_size-th item, from `rank`
    everything = gather_objects(results_of_mine)   # rank 0: list per rank; others: None
    same = broadcast_object(value_on_rank0)        # rank 0's value on every rank
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device: str | None = None) -> tuple[int, int, torch.device]:
    """Start the process group when launched by torchrun; return (rank, world_size, device)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return rank, world_size, dev


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def shard(items: list, rank: int, world_size: int) -> list:
    """Rank r takes items r, r + world_size, r + 2*world_size, ... (keeps the load balanced)."""
    return items[rank::world_size]


def gather_objects(obj):
    """Collect one picklable object from every rank onto rank 0 (a list indexed by rank).

    Single process: returns [obj]. Other ranks get None. Objects travel between our own
    processes only (never from a file), so pickling here is safe.
    """
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (whatever the others pass is ignored). Single process: `obj`.

    Pickled between our own processes only (never read from a file), like gather_objects.
    """
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
