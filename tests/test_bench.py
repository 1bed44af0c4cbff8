"""Tests for srlm/bench/: the FLOP count behind MFU on hand-computed numbers, and both benchmarks run
end to end on the tiny config (CPU, one step), writing the rows BENCHMARKS.md reads.

The figures themselves are measured by the scripts, never asserted here.

    python -m pytest -q tests/test_bench.py
"""
import pytest

from srlm.bench import sampling as bench_sampling
from srlm.bench import train as bench_train
from srlm.io import read_jsonl
from srlm.model import ModelArgs


def test_model_flops_per_token_hand_computed():
    """6 x (parameters - embedding table) + 12 x layers x dim x sequence: with 100,000 parameters,
    a 512 x 64 embedding, 2 layers, seq 32: 6 x 67,232 + 12 x 2 x 64 x 32 = 403,392 + 49,152."""
    args = ModelArgs.preset("tiny")
    assert bench_train.model_flops_per_token(args, 100_000, 32) == 452_544


def test_bench_train_times_every_stage_and_variant(tmp_path):
    out = tmp_path / "train.jsonl"
    rows = bench_train.main(["--config", "tiny", "--stage", "sft", "dpo", "--variant", "plain", "kernels",
                             "--steps", "1", "--warmup", "0", "--seq-len", "32", "--batch-size", "2",
                             "--micro-batch-size", "2", "--device", "cpu", "--out", str(out)])
    assert [(r["stage"], r["variant"]) for r in rows] == [("sft", "plain"), ("sft", "kernels"),
                                                          ("dpo", "plain"), ("dpo", "kernels")]
    for r in rows:
        seqs = 2 * (2 if r["stage"] == "dpo" else 1)
        assert r["tokens_per_s"] == pytest.approx(seqs * 32 / (r["ms_per_step"] / 1000), rel=0.01)
        assert r["dtype"] == "fp32" and r["logprobs"] == ("torch" if r["variant"] == "plain" else "chunked")
    assert [r["speedup_vs_plain"] for r in rows if r["variant"] == "plain"] == [1.0, 1.0]
    assert read_jsonl(out) == rows


def test_bench_sampling_runs_without_the_transformers_baseline(tmp_path):
    out = tmp_path / "sampling.jsonl"
    bench_sampling.main(["--config", "tiny", "--batch-sizes", "2", "--prompt-len", "8", "--new-tokens", "4",
                         "--repeats", "1", "--no-hf", "--device", "cpu", "--out", str(out)])
    (row,) = read_jsonl(out)
    assert (row["config"], row["batch"], row["new_tokens"]) == ("tiny", 2, 4)
    assert row["ours_tok_s"] > 0 and row["transformers_tok_s"] is None and row["ratio"] is None
