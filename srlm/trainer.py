"""The training loop: pretraining, SFT and DPO, one process or many (FSDP2). Command line: train.py.

    cfg = TrainConfig(stage="sft", data=["ift.jsonl", "eft.jsonl"], out="runs/m1", init="runs/m0")
    summary = train(cfg)                        # what `python train.py ...` does

One step, whatever the stage:
  1. the step's global batch (srlm/data.py: a per-epoch permutation from the seed) is split across
     ranks, then into micro-batches;
  2. each micro-batch runs one forward pass of LogprobModel (log-probs of the target tokens summed
     per sequence, srlm/logprobs.py) and adds its share of the loss to the gradients;
  3. the loss is normalised over the whole global batch (tokens for pretrain/SFT, pairs for DPO),
     so 1 process and N processes, any micro-batch size, compute the same gradient;
  4. gradients are clipped, AdamW steps, metrics are reduced over ranks and logged.

Distributed: under torchrun the model is sharded with FSDP2 (srlm/fsdp.py). FSDP averages
gradients over ranks; each rank's loss is multiplied by world_size to undo that. With several
micro-batches per step, gradients are reduce-scattered once, in the last backward (step_losses).
On GPU, bf16 mixed precision keeps fp32 master weights (FSDP MixedPrecisionPolicy, or autocast
for a single process). One process never touches torch.distributed.

The rest, one concern per file: settings srlm/train_config.py; the model, built or sharded
srlm/fsdp.py; the resumable state in DIR.train/ and the final DIR/ srlm/resume.py; DPO's
reference log-probs srlm/reference.py; batches srlm/data.py; losses srlm/logprobs.py, srlm/dpo.py.
The final checkpoint appears only when training has finished; running a finished stage again is
a no-op. A killed run started again with the same command continues from DIR.train/checkpoint.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from srlm import dist as sdist
from srlm.checkpoint import save_hf
from srlm.data import TruncationStats, batch_indices, collate, example_length, load_rows, tokenize
from srlm.dpo import dpo_loss
from srlm.fsdp import build_model, build_sharded_model, enable_activation_checkpointing, full_model_state, set_grad_sync
from srlm.io import DataError, append_jsonl, input_hash, read_jsonl_partial, write_jsonl
from srlm.loading import parse_dtype
from srlm.logprobs import LogprobModel
from srlm.reference import pair_logps, reference_logps
from srlm.resume import (check_out_dir, check_resume_config, finished_summary, load_training_state, save_due,
                         save_training_state)
from srlm.tokenizer import Tokenizer, load_tokenizer
from srlm.train_config import STAGE_DEFAULTS, TrainConfig, TrainingError, log

__all__ = ["STAGE_DEFAULTS", "TrainConfig", "TrainingError", "train"]

DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected")


# ---------------------------------------------------------------------------------------------
# small pure pieces
# ---------------------------------------------------------------------------------------------
def lr_at(step: int, total_steps: int, lr: float, min_lr: float, warmup_steps: int) -> float:
    """Linear warmup from lr/warmup to lr over `warmup_steps`, then linear decay to min_lr at the last step."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return lr + (min_lr - lr) * progress


def total_steps_for(cfg: TrainConfig, n_examples: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * n_examples / cfg.batch_size))


def micro_batches(items: list, size: int) -> list[list]:
    return [items[i: i + size] for i in range(0, len(items), size)]


# ---------------------------------------------------------------------------------------------
# one optimizer step
# ---------------------------------------------------------------------------------------------
def step_losses(wrapped, cfg: TrainConfig, examples: list[dict], global_idx: list[int], rank: int, world: int,
                pad_id: int, device: torch.device, autocast) -> dict[str, torch.Tensor]:
    """Forward + backward over this rank's share of one global batch; return the rank's metric sums.

    The loss is normalised over the whole global batch (target tokens for pretrain/SFT, pairs for
    DPO), then scaled by world_size because FSDP averages the gradients of the ranks: the result is
    the gradient of the global mean loss. Metrics stay on the device (no sync per micro-batch).

    Gradient accumulation under FSDP2: the micro-batches before the last one keep their gradients
    unsharded and local (set_requires_gradient_sync(False)); the last backward reduce-scatters the
    sum once per step instead of once per micro-batch. The price is memory: a full-size fp32
    gradient of the whole model on every rank while a step runs, fine for 7B, too much for 70B;
    cfg.reduce_every_micro_batch (--reduce-every-micro-batch) keeps gradients sharded instead.
    Every rank has the same number of micro-batches (batch_size is a multiple of world_size).
    """
    mine = [examples[i] for i in sdist.shard(global_idx, rank, world)]
    batches = micro_batches(mine, cfg.micro_batch_size)
    last = len(batches) - 1
    scale = world if dist.is_initialized() else 1
    zero = torch.zeros((), dtype=torch.float64, device=device)
    sums = {"loss": zero.clone(), "tokens": zero.clone()}
    if cfg.stage != "dpo":
        total_targets = max(1, sum(sum(examples[i]["loss_mask"][1:]) for i in global_idx))
        for i, mb in enumerate(batches):
            set_grad_sync(wrapped, i == last or cfg.reduce_every_micro_batch)
            tokens, loss_mask = collate([e["tokens"] for e in mb], [e["loss_mask"] for e in mb], pad_id)
            with autocast():
                logps = wrapped(tokens.to(device), loss_mask.to(device))  # (B,) summed over target tokens
            nll = -logps.sum()
            (nll * (scale / total_targets)).backward()
            sums["loss"] += nll.detach() / total_targets
            sums["tokens"] += sum(len(e["tokens"]) for e in mb)
        return sums

    sums.update({key: zero.clone() for key in DPO_METRICS})
    n_pairs = len(global_idx)
    for i, mb in enumerate(batches):
        set_grad_sync(wrapped, i == last or cfg.reduce_every_micro_batch)
        chosen, rejected = pair_logps(wrapped, mb, pad_id, device, autocast)  # (B,) each
        ref_chosen = torch.tensor([e["ref_chosen_logps"] for e in mb], dtype=torch.float32, device=device)
        ref_rejected = torch.tensor([e["ref_rejected_logps"] for e in mb], dtype=torch.float32, device=device)
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            chosen, rejected, ref_chosen, ref_rejected, beta=cfg.beta, label_smoothing=cfg.label_smoothing,
            loss_type=cfg.loss, nll_alpha=cfg.nll_alpha,
            chosen_lengths=torch.tensor([sum(e["chosen_mask"]) for e in mb], dtype=torch.float32, device=device))
        (losses.sum() * (scale / n_pairs)).backward()
        sums["loss"] += losses.detach().sum() / n_pairs
        sums["tokens"] += sum(len(e["chosen_tokens"]) + len(e["rejected_tokens"]) for e in mb)
        sums["rewards/chosen"] += chosen_rewards.sum() / n_pairs
        sums["rewards/rejected"] += rejected_rewards.sum() / n_pairs
        sums["rewards/accuracies"] += (chosen_rewards > rejected_rewards).sum() / n_pairs
        sums["rewards/margins"] += (chosen_rewards - rejected_rewards).sum() / n_pairs
        sums["logps/chosen"] += chosen.detach().sum() / n_pairs
        sums["logps/rejected"] += rejected.detach().sum() / n_pairs
    return sums


def grad_norm_and_clip(params: list, max_norm: float) -> float:
    """Total gradient norm before clipping (clipping only when max_norm > 0)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return float(norm)


def all_reduce_sum(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """Sum each metric over the ranks: one collective and one device-to-host copy per step."""
    t = torch.stack(list(sums.values()))
    if dist.is_initialized():
        dist.all_reduce(t)
    return dict(zip(sums, t.tolist()))


# ---------------------------------------------------------------------------------------------
# before the first step
# ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    """What train() sets up before its first step."""
    model: LogprobModel  # the Llama, returning summed log-probs per sequence (FSDP2-sharded under torchrun)
    tokenizer: Tokenizer
    examples: list[dict]  # tokenized rows (srlm/data.py), DPO ones with their reference log-probs
    cut: TruncationStats
    optimizer: torch.optim.Optimizer
    params: list
    total: int  # optimizer steps
    warmup: int
    start: int  # first step to run (> 0 when resuming)
    autocast: Callable


def setup(cfg: TrainConfig, work: Path, rank: int, world: int, device: torch.device) -> Run:
    """Tokenizer, model, data, DPO reference log-probs, optimizer, and the step to start from."""
    ckpt_dir, metrics_path = work / "checkpoint", work / "metrics.jsonl"
    dtype = parse_dtype(cfg.dtype, device)
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes")
    use_autocast = dtype != torch.float32 and world == 1

    def autocast():
        if use_autocast:
            return torch.autocast(device_type=device.type, dtype=dtype)
        return contextlib.nullcontext()

    # ---- tokenizer, model, data ----
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.init, cfg.chat)  # tokenizer.model or tokenizer.json, with the chat format
    rows = load_rows(cfg.data, cfg.stage)  # checked before anything is written or deleted
    resuming = cfg.resume and (ckpt_dir / "trainer.pt").is_file()
    if resuming:
        check_resume_config(ckpt_dir, cfg)
    if not cfg.resume and work.exists() and sdist.is_main():
        shutil.rmtree(work)
    sdist.barrier()
    source = ckpt_dir / "model" if resuming else (Path(cfg.init) if cfg.init else None)
    if world > 1:  # meta device + FSDP2 shards (build_sharded_model)
        wrapped = build_sharded_model(cfg, tokenizer, source, device, world, dtype)
        model = wrapped.model
    else:
        model = build_model(cfg, tokenizer, source)
        if cfg.activation_checkpointing:
            enable_activation_checkpointing(model)
        wrapped = LogprobModel(model.to(device), impl=cfg.logprob_impl)
    if tokenizer.vocab_size > model.args.vocab_size:
        raise DataError(f"{tokenizer.path}: {tokenizer.vocab_size} pieces, but the model has only "
                        f"vocab_size={model.args.vocab_size}")
    max_len = cfg.max_seq_len or model.args.max_seq_len
    if max_len > model.args.max_seq_len + 1:
        raise ValueError(f"--max-seq-len {max_len} exceeds the model's max_seq_len={model.args.max_seq_len}")
    examples, cut = tokenize(rows, cfg.stage, tokenizer, max_len)
    log(f"{cfg.stage}: {len(rows)} rows -> {len(examples)} examples from {', '.join(cfg.data)}; "
        f"max_len {max_len}: {cut}")
    work.mkdir(parents=True, exist_ok=True)

    if cfg.stage == "dpo":
        meta = {"start_model": str(Path(cfg.init).resolve()) if cfg.init else cfg.model_config,
                "data": input_hash([[e["chosen_tokens"], e["rejected_tokens"]] for e in examples]),
                "dtype": str(dtype)}
        # On resume the model in memory is the trained one, not the reference: never compute with it.
        reference_logps(wrapped, examples, work / "ref_logps.jsonl", meta, cfg.micro_batch_size,
                        tokenizer.pad_id, device, autocast, allow_compute=not resuming)

    # ---- optimizer and resume ----
    params = [p for p in wrapped.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
    total = total_steps_for(cfg, len(examples))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(0.05 * total)
    start = 0
    if resuming:
        start = load_training_state(ckpt_dir, wrapped, optimizer, device)
        log(f"resuming from {ckpt_dir} at step {start}/{total}")
        # metrics.jsonl is a resumable log keyed by step, not by input_hash: check_resume_config has
        # already refused other settings, so every line is this run's; lines of steps after the
        # saved state are dropped, since the resumed run logs them again.
        if sdist.is_main():
            write_jsonl(metrics_path, [r for r in read_jsonl_partial(metrics_path) if r.get("step", 0) <= start])
    else:
        torch.manual_seed(cfg.seed + rank)  # dropout streams, different per rank
        if sdist.is_main():
            write_jsonl(metrics_path, [])
    sdist.barrier()
    return Run(wrapped, tokenizer, examples, cut, optimizer, params, total, warmup, start, autocast)


def check_finite(step: int, what: str, value: float, ckpt_dir: Path, hint: str = "") -> None:
    """Stop before the optimizer step when the loss or the gradient norm is NaN or inf."""
    if not math.isfinite(value):
        last_good = ckpt_dir if ckpt_dir.exists() else "none (no save yet)"
        raise TrainingError(f"step {step + 1}: the {what} is {value}; stopped before the optimizer step. "
                            f"The last good state is {last_good}{hint}")


# ---------------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict:
    """Train as `cfg` says; returns the summary (the last line of metrics.jsonl)."""
    out = Path(cfg.out)
    work = out.parent / f"{out.name}.train"
    ckpt_dir, metrics_path = work / "checkpoint", work / "metrics.jsonl"
    done = finished_summary(out)
    if done is not None:
        log(f"{out} is already a finished {cfg.stage} checkpoint; nothing to do (delete it to train again)")
        return done
    check_out_dir(out)
    rank, world, device = sdist.init_distributed(cfg.device)
    run = setup(cfg, work, rank, world, device)
    model, optimizer, examples, pad_id = run.model, run.optimizer, run.examples, run.tokenizer.pad_id
    lengths = [example_length(e) for e in examples] if cfg.group_by_length else None  # for srlm/data.py's order

    model.train()
    bar = tqdm(total=run.total, initial=run.start, desc=cfg.stage, disable=not (cfg.progress and sdist.is_main()))
    last, t_start = {}, time.time()
    last_save = t_start
    for step in range(run.start, run.total):
        t0 = time.time()
        lr = lr_at(step, run.total, cfg.lr, cfg.min_lr, run.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # data: this step's examples, the same on every rank and in every rerun
        global_idx = batch_indices(step, cfg.batch_size, len(examples), cfg.seed, lengths, cfg.group_by_length)
        # forward, loss, backward: this rank's share, in micro-batches
        sums = step_losses(model, cfg, examples, global_idx, rank, world, pad_id, device, run.autocast)
        metrics = all_reduce_sum(sums)
        check_finite(step, "loss", metrics["loss"], ckpt_dir, "; lower --lr or check the data")
        grad_norm = grad_norm_and_clip(run.params, cfg.grad_clip)
        check_finite(step, "gradient norm", grad_norm, ckpt_dir)
        # step
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # log
        dt = time.time() - t0
        n_tokens = metrics.pop("tokens")
        last = {"step": step + 1, "epoch": round((step + 1) * cfg.batch_size / len(examples), 4), "lr": lr,
                "loss": metrics.pop("loss"), "grad_norm": grad_norm, "tokens": int(n_tokens),
                "tokens_per_s": n_tokens / dt, "step_time_s": dt, **metrics}
        if sdist.is_main():
            append_jsonl(metrics_path, [last])
            shown = {"loss": f"{last['loss']:.4f}", "lr": f"{lr:.2e}"}
            if cfg.stage == "dpo":
                shown.update({k: f"{last[k]:.3f}" for k in ("rewards/accuracies", "rewards/margins",
                                                              "rewards/chosen", "rewards/rejected")})
            bar.set_postfix(shown)
        bar.update(1)
        # save the resumable state now and then (srlm/resume.py)
        stop_here = cfg.stop_after_steps is not None and step + 1 >= cfg.stop_after_steps and step + 1 < run.total
        by_steps = (step + 1) % cfg.save_every == 0
        if step + 1 < run.total and (stop_here or by_steps or save_due(last_save, cfg.save_every_minutes, device)):
            save_training_state(ckpt_dir, model, optimizer, step + 1, cfg, run.tokenizer.path, device)
            last_save = time.time()
        if stop_here:
            bar.close()
            log(f"stopped after step {step + 1} (--stop-after-steps); run again to resume")
            return {**last, "stopped": True}
    bar.close()

    # ---- the final checkpoint ----
    state = full_model_state(model)
    summary = {"summary": True, "stage": cfg.stage, "steps": run.total, "examples": len(examples),
               "prompts_cut": run.cut.prompts_cut, "answers_cut": run.cut.answers_cut,
               "train_time_s": time.time() - t_start, **{k: v for k, v in last.items() if k != "step"}}
    if sdist.is_main():
        save_dtype = parse_dtype(cfg.save_dtype, torch.device("cpu"))
        save_hf(state, model.model.args, out, tokenizer_path=run.tokenizer.path, dtype=save_dtype)
        log_rows = read_jsonl_partial(metrics_path) + [summary]
        write_jsonl(metrics_path, log_rows)
        write_jsonl(out / "metrics.jsonl", log_rows)  # last: its presence marks the stage finished
        if ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)  # the final checkpoint supersedes the resumable state
        log(f"wrote {out} ({run.total} steps, final loss {summary.get('loss', float('nan')):.4f})")
    sdist.barrier()
    return summary
