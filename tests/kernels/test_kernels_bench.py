"""Tests for kernels/bench.py: the FLOP count on hand numbers, the baselines compute what the kernel
computes (so the benchmark times like against like), and the CPU log-probs run end to end.

    python -m pytest -q tests/kernels/test_kernels_bench.py
"""
import pytest
import torch
import torch.nn.functional as F

from kernels import bench
from srlm.io import read_jsonl


def test_attention_flops_hand_computed():
    """Forward 4 B H T S D (halved when causal), backward 2.5 x forward: B=2 H=3 T=S=8 D=4 gives
    4 x 2 x 3 x 8 x 8 x 4 = 6144 (3072 causal), forward + backward 3.5 x that."""
    assert bench.attention_flops(2, 3, 8, 8, 4, causal=False) == (6144, 21504)
    assert bench.attention_flops(2, 3, 8, 8, 4, causal=True) == (3072, 10752)


def test_baselines_are_the_log_prob_of_each_target():
    torch.manual_seed(0)
    hidden, weight = torch.randn(6, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    targets = torch.tensor([0, 6, -100, 3, -100, 2])
    expected = torch.tensor([0.0 if t < 0 else torch.log_softmax(hidden[i] @ weight.T, dim=-1)[t].item()
                             for i, t in enumerate(targets.tolist())], dtype=torch.float64)
    torch.testing.assert_close(bench.naive_logprobs(hidden, weight, targets).double(), expected)
    if hasattr(F, "linear_cross_entropy"):
        torch.testing.assert_close(bench.torch_linear_cross_entropy(hidden, weight, targets).double(), expected)


def test_cpu_logprobs_bench_writes_its_rows(tmp_path):
    out = tmp_path / "bench.jsonl"
    records = bench.main(["--only", "logprobs", "--cpu-tokens", "32", "--cpu-dim", "8", "--vocab", "64",
                          "--warmup", "0", "--iters", "1", "--out", str(out)])
    names = [r["impl"] for r in records]
    assert names[:2] == ["naive log_softmax", "linear_logprobs_chunked"]
    assert all((r["N"], r["V"], r["D"], r["device"]) == (32, 64, 8, "cpu") and r["ms_fwd_bwd"] > 0 for r in records)
    rows = read_jsonl(out)
    assert [r["impl"] for r in rows] == names and all("machine" in r for r in rows)


@pytest.mark.parametrize("argv", [["--only", "nothing"], ["--tokens", "many"]])
def test_bad_flags_are_argparse_errors(argv):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2
