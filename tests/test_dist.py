"""Tests for srlm/dist.py: one process never touches torch.distributed, and two gloo processes
shard, gather and broadcast as the docstring says.

    python -m pytest -q tests/test_dist.py
"""
import os
import subprocess
import sys

import torch

from conftest import ROOT
from srlm import dist


def test_one_process_is_rank_0_of_1_without_a_process_group(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    rank, world, device = dist.init_distributed("cpu")
    assert (rank, world, device) == (0, 1, torch.device("cpu"))
    assert not torch.distributed.is_initialized() and dist.is_main()
    assert dist.gather_objects({"a": 1}) == [{"a": 1}] and dist.broadcast_object([3]) == [3]
    dist.barrier()
    dist.cleanup()  # both no-ops


def test_shard_takes_every_world_size_th_item_from_rank():
    items = list(range(7))
    assert [dist.shard(items, r, 3) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum((dist.shard(items, r, 3) for r in range(3)), [])) == items


TWO_RANKS = r"""
import sys
from pathlib import Path

import torch
from srlm import dist
rank, world, device = dist.init_distributed("cpu")
assert world == 2 and torch.distributed.is_initialized() and dist.is_main() == (rank == 0)
gathered = dist.gather_objects({"rank": rank, "mine": dist.shard(list(range(5)), rank, world)})
same = dist.broadcast_object("from rank 0" if rank == 0 else "ignored")
if rank == 0:
    assert gathered == [{"rank": 0, "mine": [0, 2, 4]}, {"rank": 1, "mine": [1, 3]}], gathered
else:
    assert gathered is None
assert same == "from rank 0", same
dist.barrier()
dist.cleanup()
Path(sys.argv[1], f"rank{rank}.ok").write_text("ok")  # a file each: the ranks' stdout lines can interleave
"""


def test_two_gloo_ranks_gather_to_rank_0_and_broadcast_from_it(tmp_path):
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           str(script), str(tmp_path)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("*.ok")) == ["rank0.ok", "rank1.ok"]
