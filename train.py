"""Train a Llama: plain next-token pretraining, SFT on (prompt, response), or DPO on preference pairs.

One process:
    python train.py --stage sft --init runs/m0 --data data/ift.jsonl data/eft.jsonl --out runs/m1
    python train.py --stage dpo --init runs/m1 --data runs/iter1/pairs.jsonl --out runs/m2
    python train.py --stage pretrain --model-config tiny --tokenizer data/tokenizer.model \\
        --data data/pretrain.jsonl --out data/m0 --lr 1e-3
Many processes (FSDP2 over all of them; nccl on GPU, gloo on CPU):
    torchrun --nproc_per_node 8 train.py --stage dpo ...

Data rows: pretrain {"text"}; sft {"prompt", "response"}; dpo {"prompt", "chosen", "rejected"}.
--out DIR receives the final Hugging Face checkpoint and metrics.jsonl when training finishes;
DIR.train/ holds the live metrics, the resumable state and (DPO) the reference log-probs.
Run the same command again after a crash to resume. The loop itself lives in srlm/trainer.py.
"""
from __future__ import annotations

import argparse
from dataclasses import fields

from srlm.chat import FORMATS
from srlm.trainer import TrainConfig, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", required=True, choices=["pretrain", "sft", "dpo"])
    p.add_argument("--data", required=True, nargs="+", help="JSONL file(s); several are mixed together")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--init", help="HF checkpoint directory to start from (its tokenizer files and chat template are carried along)")
    src.add_argument("--model-config", help="fresh weights: a ModelArgs preset name (tiny, llama2-7b, ...) or a JSON file")
    p.add_argument("--tokenizer", help="tokenizer.model or tokenizer.json (default: the one in --init)")
    p.add_argument("--chat", choices=sorted(FORMATS),
                   help="chat format (default: the checkpoint's chat template, else llama2)")
    g = p.add_argument_group("optimisation (defaults: the paper's for sft/dpo)")
    g.add_argument("--lr", type=float, help="peak learning rate (sft 5.5e-6, dpo 1e-6, pretrain 3e-4)")
    g.add_argument("--min-lr", type=float, help="learning rate at the last step (sft 1.1e-6, dpo 1e-7, pretrain 3e-5)")
    g.add_argument("--warmup-steps", type=int, help="linear warmup steps (default: 5%% of the steps)")
    g.add_argument("--epochs", type=float, default=1.0)
    g.add_argument("--max-steps", type=int, help="number of optimizer steps (overrides --epochs)")
    g.add_argument("--batch-size", type=int, default=16, help="sequences (DPO: pairs) per step, all ranks together")
    g.add_argument("--micro-batch-size", type=int, default=4, help="sequences (pairs) per forward pass per rank")
    g.add_argument("--group-by-length", type=int, default=0,
                   help="sort rows by length within windows of this many batches, so batches pad less (0: off)")
    g.add_argument("--max-seq-len", type=int, help="longest sequence in tokens (default: the model's)")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay on matrices (pretrain 0.1, else 0)")
    g.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: no clipping)")
    g.add_argument("--dropout", type=float, help="dropout while training (sft 0.1, dpo/pretrain 0)")
    d = p.add_argument_group("DPO")
    d.add_argument("--beta", type=float, default=0.1)
    d.add_argument("--label-smoothing", type=float, default=0.0, help="conservative DPO: chance a label is flipped")
    d.add_argument("--loss", choices=["dpo", "ipo"], default="dpo")
    d.add_argument("--nll-alpha", type=float, default=0.0,
                   help="DPO + NLL: weight of the chosen answer's per-token NLL (0: plain DPO)")
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    r.add_argument("--dtype", choices=["fp32", "bf16"], help="compute dtype (default: bf16 on CUDA, fp32 on CPU)")
    r.add_argument("--save-dtype", choices=["fp32", "bf16"], help="dtype of the final checkpoint (default fp32)")
    r.add_argument("--activation-checkpointing", action="store_true", help="recompute blocks in backward")
    r.add_argument("--reduce-every-micro-batch", action="store_true",
                   help="torchrun: reduce-scatter gradients after every micro-batch, not once per step "
                        "(keeps gradients sharded: less memory, more communication; for models like 70B)")
    r.add_argument("--attn-impl", choices=["torch", "sdpa", "triton"])
    r.add_argument("--logprob-impl", choices=["auto", "torch", "chunked", "triton"],
                   help="head log-prob implementation (default auto: Triton on CUDA when available)")
    r.add_argument("--save-every", type=int, default=200, help="save the resumable state every N steps")
    r.add_argument("--save-every-minutes", type=float, default=5.0,
                   help="and whenever this many minutes passed since the last save (0: steps only)")
    r.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from DIR.train/checkpoint when it exists")
    r.add_argument("--stop-after-steps", type=int, help=argparse.SUPPRESS)  # test hook: save and stop here
    r.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    """Every flag is the TrainConfig field of the same name (--no-progress: progress=False)."""
    names = {f.name for f in fields(TrainConfig)} - {"progress"}
    return TrainConfig(**{k: v for k, v in vars(a).items() if k in names}, progress=not a.no_progress)


def main(argv: list[str] | None = None) -> dict:
    """Parse the flags and train; returns the final metrics (the summary line of metrics.jsonl)."""
    return train(config_from_args(parse_args(argv)))


if __name__ == "__main__":
    from srlm.cli import run_cli
    from srlm.trainer import TrainingError

    run_cli(main, "train.py", failures=(TrainingError,))  # bad input: one line, exit 2; --debug: traceback
