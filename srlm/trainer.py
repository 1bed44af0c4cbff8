"""The training loop behind train.py: pretraining, SFT and DPO, one process or many (FSDP2).

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

Distributed: under torchrun every transformer block is sharded with FSDP2 `fully_shard`, then
the root (the LogprobModel wrapper, which owns the embeddings, final norm and output head). The
model is built on the meta device and only each rank's shards are allocated; each rank reads its
own rows of a Hugging Face checkpoint, while fresh weights and Meta checkpoints come from the one
full CPU copy that rank 0 initialises or reads (build_sharded_model). FSDP averages gradients over
ranks; each rank's loss is multiplied by world_size to undo that. With several micro-batches per
step, gradients are reduce-scattered once, in the last backward (step_losses).
On GPU, bf16 mixed precision keeps fp32 master weights (FSDP MixedPrecisionPolicy, or autocast
for a single process). One process never touches torch.distributed.

Files, for `--out DIR`:
  DIR/                      the final Hugging Face checkpoint + metrics.jsonl, written at the end
  DIR.train/metrics.jsonl   one JSON line per step while training (copied into DIR at the end)
  DIR.train/checkpoint/     latest resumable state, swapped in atomically: model/ (HF dir, fp32),
                            optimizer.pt (full AdamW state) and trainer.pt (step, RNG of every rank,
                            settings), both read with torch.load(weights_only=True)
  DIR.train/ref_logps.jsonl DPO only: the reference model's log-probs of every pair, computed once
                            before training with the starting model (its first line describes the data)
The final checkpoint appears only when training has finished; running a finished stage again is
a no-op. A killed run started again with the same command continues from DIR.train/checkpoint.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from srlm import dist as sdist
from srlm.checkpoint import load_hf_args, load_hf_shards, load_model, save_hf
from srlm.data import batch_indices, collate, collate_pairs, load_rows, tokenize
from srlm.dpo import dpo_loss
from srlm.io import DataError, append_jsonl, read_jsonl_partial, replace_dir, write_jsonl
from srlm.logprobs import LogprobModel, unwrap_state_dict
from srlm.model import Llama, ModelArgs, precompute_freqs_cis
from srlm.tokenizer import Tokenizer, load_tokenizer

# The paper's schedules (SFT 5.5e-6 -> 1.1e-6, DPO 1e-6 -> 1e-7); pretraining is ours.
STAGE_DEFAULTS = {
    "pretrain": dict(lr=3e-4, min_lr=3e-5, dropout=0.0, weight_decay=0.1),
    "sft": dict(lr=5.5e-6, min_lr=1.1e-6, dropout=0.1, weight_decay=0.0),
    "dpo": dict(lr=1e-6, min_lr=1e-7, dropout=0.0, weight_decay=0.0),
}
DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected")


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN/inf loss, an inconsistent state); the message says what to do."""


@dataclass
class TrainConfig:
    stage: str
    data: list[str]
    out: str
    init: Optional[str] = None  # HF checkpoint dir to start from
    model_config: Optional[str] = None  # or fresh weights: a ModelArgs preset name or a JSON file
    tokenizer: Optional[str] = None  # tokenizer.model (default: the one in --init)
    lr: Optional[float] = None  # None: the stage's default (STAGE_DEFAULTS)
    min_lr: Optional[float] = None
    warmup_steps: Optional[int] = None  # None: 5% of the steps
    epochs: float = 1.0
    max_steps: Optional[int] = None  # overrides epochs
    batch_size: int = 16  # sequences (DPO: pairs) per optimizer step, over all ranks
    micro_batch_size: int = 4  # sequences (pairs) per forward pass on one rank
    max_seq_len: Optional[int] = None  # None: the model's max_seq_len
    beta: float = 0.1
    label_smoothing: float = 0.0
    loss: str = "dpo"  # dpo | ipo
    dropout: Optional[float] = None
    weight_decay: Optional[float] = None
    grad_clip: float = 1.0
    save_every: int = 200
    save_every_minutes: float = 5.0  # also save when this much time passed since the last save (0: off)
    seed: int = 0
    device: Optional[str] = None
    dtype: Optional[str] = None  # compute dtype: fp32 | bf16 (default: bf16 on CUDA, fp32 on CPU)
    save_dtype: Optional[str] = None  # dtype of the final checkpoint (default: fp32)
    activation_checkpointing: bool = False
    reduce_every_micro_batch: bool = False  # FSDP: reduce-scatter gradients after every micro-batch (see step_losses)
    attn_impl: Optional[str] = None
    logprob_impl: Optional[str] = None  # auto | torch | chunked | triton (srlm/logprobs.py)
    resume: bool = True
    stop_after_steps: Optional[int] = None  # test hook: save the state and stop after this global step
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.stage not in STAGE_DEFAULTS:
            raise ValueError(f"--stage must be one of {sorted(STAGE_DEFAULTS)}, got {self.stage!r}")
        for key, value in STAGE_DEFAULTS[self.stage].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if (self.init is None) == (self.model_config is None):
            raise ValueError("give exactly one of --init DIR (start from a checkpoint) or --model-config NAME|FILE")
        if self.model_config is not None and self.tokenizer is None:
            raise ValueError("--model-config (fresh weights) needs --tokenizer FILE")
        if self.loss not in ("dpo", "ipo"):
            raise ValueError(f"--loss must be 'dpo' or 'ipo', got {self.loss!r}")
        if self.batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError("--batch-size and --micro-batch-size must be positive")
        if self.save_every < 1 or not self.save_every_minutes >= 0:
            raise ValueError("--save-every must be >= 1 and --save-every-minutes >= 0")


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


def fingerprint(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def parse_dtype(name: Optional[str], device: torch.device) -> torch.dtype:
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"--dtype must be fp32 or bf16, got {name!r}")
    return table[name]


def enable_activation_checkpointing(model: Llama) -> None:
    """Recompute each transformer block in the backward pass instead of storing its activations."""
    from torch.utils.checkpoint import checkpoint

    for block in model.layers:
        inner = block.forward
        block.forward = lambda *args, _inner=inner: checkpoint(_inner, *args, use_reentrant=False)


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _all_reduce_sum(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """Sum each metric over the ranks: one collective and one device-to-host copy per step."""
    t = torch.stack(list(sums.values()))
    if dist.is_initialized():
        dist.all_reduce(t)
    return dict(zip(sums, t.tolist()))


def _log(msg: str) -> None:
    if sdist.is_main():
        tqdm.write(f"[train] {msg}")


# ---------------------------------------------------------------------------------------------
# model setup
# ---------------------------------------------------------------------------------------------
def fresh_model_args(spec: str, tokenizer: Tokenizer, overrides: dict) -> ModelArgs:
    """ModelArgs from a preset name (vocab_size follows the tokenizer) or a JSON file of fields."""
    path = Path(spec)
    if path.suffix == ".json" or path.is_file():
        try:
            fields = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: model config file not found") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: malformed JSON ({e})") from None
        known = set(ModelArgs.__dataclass_fields__)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise DataError(f"{path}: unknown ModelArgs field(s) {unknown}")
        args = ModelArgs(**{**fields, **overrides})
        if args.vocab_size < tokenizer.vocab_size:
            raise DataError(f"{path}: vocab_size={args.vocab_size} is smaller than the tokenizer's "
                            f"{tokenizer.vocab_size}")
        return args
    return ModelArgs.preset(spec, vocab_size=tokenizer.vocab_size, **overrides)


def _arg_overrides(cfg: TrainConfig) -> dict:
    """ModelArgs fields the command line sets on top of the checkpoint's or preset's."""
    overrides = {"dropout": cfg.dropout}
    if cfg.attn_impl is not None:
        overrides["attn_impl"] = cfg.attn_impl
    return overrides


def build_model(cfg: TrainConfig, tokenizer: Tokenizer, source: Optional[Path]) -> Llama:
    """The model to train, on the CPU in fp32: from `source` (an HF dir) or fresh from cfg.model_config."""
    overrides = _arg_overrides(cfg)
    if source is not None:
        return load_model(source, dtype=torch.float32, device="cpu", **overrides)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    return Llama(fresh_model_args(cfg.model_config, tokenizer, overrides))


def shard_model(wrapped: LogprobModel, device: torch.device, world_size: int, dtype: torch.dtype) -> None:
    """FSDP2: each transformer block is its own unit, then the root (embeddings, norm, head)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for block in wrapped.model.layers:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(wrapped, mesh=mesh, mp_policy=mp)


def build_sharded_model(cfg: TrainConfig, tokenizer: Tokenizer, source: Optional[Path], device: torch.device,
                        world_size: int, dtype: torch.dtype) -> LogprobModel:
    """Under torchrun: the FSDP2-sharded model, without ever putting the full model on a device.

    1. Every rank learns the ModelArgs: from `source`'s config.json when it is a Hugging Face
       directory (--init, or the resumable checkpoint); otherwise rank 0 alone builds the full
       fp32 model on the CPU exactly as one process would (build_model: a Meta checkpoint, or
       fresh weights from the seed) and sends the others its ModelArgs.
    2. Every rank builds the same architecture on the `meta` device (shapes, no memory), shards
       it with fully_shard, and allocates just its own shards on `device` with to_empty.
    3. The shards are filled with the very weights one process would load:
       - HF: every rank reads only the rows it owns from the safetensors files (load_hf_shards),
         so no process holds the full model;
       - otherwise set_model_state_dict(broadcast_from_rank0=True) sends rank 0's tensors one at
         a time and each rank copies its slice. Peak memory: rank 0's full CPU copy, plus one
         full tensor on each device.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    per_rank = source is not None and (source / "config.json").is_file()
    if per_rank:
        full, args = None, load_hf_args(source, **_arg_overrides(cfg))
    else:
        full = build_model(cfg, tokenizer, source) if sdist.is_main() else None
        args = ModelArgs(**sdist.broadcast_object(full.args.to_dict() if full is not None else None))
    with torch.device("meta"):
        model = Llama(args)
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    wrapped = LogprobModel(model, impl=cfg.logprob_impl)
    shard_model(wrapped, device, world_size, dtype)
    wrapped.to_empty(device=device)  # this rank's shards, uninitialised until the next lines fill them
    if per_rank:
        load_hf_shards(model, source)
    else:
        state = {f"model.{k}": v for k, v in full.state_dict().items()} if full is not None else {}
        set_model_state_dict(wrapped, state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        del full, state
    # The rotary table is a plain attribute, neither parameter nor buffer, so to_empty skipped it
    # (and it has no place in a state dict). Recompute it on the target device to be sure it holds
    # real values, never meta or uninitialised memory.
    model.freqs_cis = precompute_freqs_cis(args.head_dim, args.max_seq_len, args.rope_theta).to(device)
    return wrapped


# ---------------------------------------------------------------------------------------------
# state on disk
# ---------------------------------------------------------------------------------------------
def _state_dict_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(wrapped: LogprobModel) -> dict:
    """Full (unsharded) Llama state dict on the CPU; complete on rank 0, empty on the others."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return unwrap_state_dict(get_model_state_dict(wrapped, options=_state_dict_options()))


def save_training_state(ckpt_dir: Path, wrapped: LogprobModel, optimizer, step: int, cfg: TrainConfig,
                        tokenizer_path: str, device: torch.device) -> None:
    """Write model + optimizer + step + RNG to ckpt_dir atomically (a temp folder renamed into place)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model_state = full_model_state(wrapped)
    optim_state = get_optimizer_state_dict(wrapped, optimizer, options=_state_dict_options())
    rngs = sdist.gather_objects(_rng_state(device))
    if sdist.is_main():
        tmp = ckpt_dir.parent / f".{ckpt_dir.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_hf(model_state, wrapped.model.args, tmp / "model", tokenizer_path=tokenizer_path)
        torch.save(optim_state, tmp / "optimizer.pt")
        torch.save({"step": step, "rng": rngs, "world_size": len(rngs), "config": json.dumps(asdict(cfg))},
                   tmp / "trainer.pt")
        replace_dir(tmp, ckpt_dir)
    sdist.barrier()


# Settings that change what a run computes: a resumed run must use the ones it was started with.
RESUME_KEYS = ("stage", "data", "init", "model_config", "lr", "min_lr", "warmup_steps", "epochs", "max_steps",
               "batch_size", "max_seq_len", "beta", "label_smoothing", "loss", "dropout", "weight_decay",
               "grad_clip", "seed")


def check_resume_config(ckpt_dir: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a state saved with other settings (the result would match neither run)."""
    saved = json.loads(torch.load(ckpt_dir / "trainer.pt", map_location="cpu", weights_only=True)["config"])
    now = asdict(cfg)
    diff = [f"{k}: saved {saved.get(k)!r}, now {now[k]!r}" for k in RESUME_KEYS if saved.get(k) != now[k]]
    if diff:
        raise TrainingError(f"{ckpt_dir} was saved by a run with other settings ({'; '.join(diff)}); "
                            f"rerun with those settings to resume, or pass --no-resume to start over")


def load_training_state(ckpt_dir: Path, wrapped: LogprobModel, optimizer, device: torch.device) -> int:
    """Restore optimizer + RNG from ckpt_dir (the weights were loaded with the model); return the step."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state = torch.load(ckpt_dir / "trainer.pt", map_location="cpu", weights_only=True)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    # Only rank 0 reads the full optimizer state; FSDP scatters each rank's shard from it.
    optim_state = torch.load(ckpt_dir / "optimizer.pt", map_location="cpu", weights_only=True) if rank == 0 else {}
    set_optimizer_state_dict(wrapped, optimizer, optim_state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=world > 1))
    if state["world_size"] == world:
        _set_rng_state(state["rng"][rank], device)
    else:
        _log(f"saved with {state['world_size']} processes, resumed with {world}: RNG streams start afresh")
        torch.manual_seed(1_000_003 * state["step"] + rank)
    return int(state["step"])


# ---------------------------------------------------------------------------------------------
# DPO reference log-probs
# ---------------------------------------------------------------------------------------------
def pair_logps(wrapped: LogprobModel, pairs: list[dict], pad_id: int, device: torch.device, autocast):
    """One forward pass for chosen and rejected together -> (chosen_logps, rejected_logps), (B,) each."""
    tokens, loss_mask = collate_pairs(pairs, pad_id)  # (2B, T): chosen rows first
    with autocast():
        logps = wrapped(tokens.to(device), loss_mask.to(device))  # (2B,) summed over the response tokens
    return logps[: len(pairs)], logps[len(pairs):]


def _reshard(wrapped: nn.Module) -> None:
    """Free the parameters FSDP2 gathered for forward-only passes (the root keeps its own gathered
    after a forward, expecting a backward); a later training step must start from the sharded state,
    or the root's gradients are never reduced across ranks."""
    from torch.distributed.fsdp import FSDPModule

    for module in wrapped.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@torch.no_grad()
def reference_logps(wrapped: LogprobModel, examples: list[dict], path: Path, meta: dict, micro_batch_size: int,
                    pad_id: int, device: torch.device, autocast, allow_compute: bool = True) -> None:
    """Attach ref_chosen_logps / ref_rejected_logps to every example, computing what `path` lacks.

    `path` is a resumable log: a first line {"meta": ...} describing the data and the starting
    model, then {"index", "ref_chosen_logps", "ref_rejected_logps"} lines. A file whose meta does
    not match is recomputed. All ranks run the same number of forward passes (FSDP needs it).
    """
    rows = read_jsonl_partial(path)
    if not rows or rows[0].get("meta") != meta:
        rows = []
    done = {r["index"]: r for r in rows[1:]}
    todo = [e for e in examples if e["index"] not in done]
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if todo and not allow_compute:
        raise TrainingError(f"{path}: reference log-probs missing for {len(todo)} pairs (or made for other data), "
                            f"but the run resumes from a trained state; delete {path.parent} to start this stage again")
    if todo:
        _log(f"reference log-probs for {len(todo)} pairs (starting model, eval mode) -> {path}")
        sdist.barrier()  # every rank has read the file before rank 0 rewrites it
        if sdist.is_main() and not rows:
            write_jsonl(path, [{"meta": meta}])
        was_training = wrapped.training
        wrapped.eval()
        chunk = micro_batch_size * world
        bar = tqdm(total=len(todo), desc="ref logps", disable=not sdist.is_main(), leave=False)
        for start in range(0, len(todo), chunk):
            mine = todo[start: start + chunk][rank::world]
            batch = mine or todo[:1]  # a rank with nothing left still joins the collectives
            chosen, rejected = pair_logps(wrapped, batch, pad_id, device, autocast)
            out = [{"index": e["index"], "ref_chosen_logps": c, "ref_rejected_logps": r}
                   for e, c, r in zip(mine, chosen.tolist(), rejected.tolist())]
            gathered = sdist.gather_objects(out)
            if sdist.is_main():
                new = [r for part in gathered for r in part]
                append_jsonl(path, new)
                for r in new:
                    done[r["index"]] = r
            bar.update(min(chunk, len(todo) - start))
        bar.close()
        wrapped.train(was_training)
        _reshard(wrapped)
        sdist.barrier()
        done = {r["index"]: r for r in read_jsonl_partial(path)[1:]}
    for e in examples:
        if e["index"] not in done:
            raise TrainingError(f"{path}: no reference log-probs for pair {e['index']}; delete the file to recompute")
        e["ref_chosen_logps"] = done[e["index"]]["ref_chosen_logps"]
        e["ref_rejected_logps"] = done[e["index"]]["ref_rejected_logps"]


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
            loss_type=cfg.loss)
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


def set_grad_sync(wrapped: nn.Module, sync: bool) -> None:
    """FSDP2: whether the next backward reduce-scatters its gradients across ranks (one process: no-op)."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(wrapped, FSDPModule):
        wrapped.set_requires_gradient_sync(sync)  # recurses into every sharded block


def grad_norm_and_clip(params: list, max_norm: float) -> float:
    """Total gradient norm before clipping (clipping only when max_norm > 0)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return float(norm)


# ---------------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------------
# What train() writes into --out DIR (srlm.checkpoint.save_hf's files and metrics.jsonl): any other
# file there is someone else's, and replacing the folder would delete it.
OUT_FILES = re.compile(r"config\.json|generation_config\.json|model\.safetensors(\.index\.json)?|"
                       r"model-\d+-of-\d+\.safetensors|tokenizer\.model|metrics\.jsonl")


def check_out_dir(out: Path) -> None:
    """Refuse an --out that is a file, or a folder holding files train.py does not write."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: --out must be a folder (or not exist yet); this is a file")
    foreign = sorted(p.name for p in out.iterdir() if not OUT_FILES.fullmatch(p.name)) if out.is_dir() else []
    if foreign:
        raise DataError(f"{out}: --out holds files train.py did not write ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}); the final save replaces the whole folder, "
                        f"so choose a new or empty folder")


def save_due(last_save: float, minutes: float, device: torch.device) -> bool:
    """Has `minutes` of wall time passed since `last_save`? The same answer on every rank (rank 0's
    clock decides), since saving is a collective step."""
    due = minutes > 0 and time.time() - last_save >= 60 * minutes
    if dist.is_initialized():
        flag = torch.tensor([float(due)], device=device)
        dist.broadcast(flag, src=0)
        due = bool(flag.item())
    return due


def finished_summary(out: Path) -> Optional[dict]:
    """The final summary line of a finished run in `out`, or None."""
    rows = read_jsonl_partial(out / "metrics.jsonl") if (out / "config.json").is_file() else []
    return rows[-1] if rows and rows[-1].get("summary") else None


def train(cfg: TrainConfig) -> dict:
    out = Path(cfg.out)
    work = out.parent / f"{out.name}.train"
    ckpt_dir, metrics_path = work / "checkpoint", work / "metrics.jsonl"
    done = finished_summary(out)
    if done is not None:
        _log(f"{out} is already a finished {cfg.stage} checkpoint; nothing to do (delete it to train again)")
        return done
    check_out_dir(out)

    rank, world, device = sdist.init_distributed(cfg.device)
    dtype = parse_dtype(cfg.dtype, device)
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes")
    use_autocast = dtype != torch.float32 and world == 1

    def autocast():
        if use_autocast:
            return torch.autocast(device_type=device.type, dtype=dtype)
        return contextlib.nullcontext()

    # ---- tokenizer, model, data ----
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.init)  # tokenizer.model or tokenizer.json, with the chat format
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
    _log(f"{cfg.stage}: {len(rows)} rows -> {len(examples)} examples from {', '.join(cfg.data)}; "
         f"max_len {max_len}: {cut}")
    work.mkdir(parents=True, exist_ok=True)

    if cfg.stage == "dpo":
        meta = {"start_model": str(Path(cfg.init).resolve()) if cfg.init else cfg.model_config,
                "data": fingerprint([[e["chosen_tokens"], e["rejected_tokens"]] for e in examples]),
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
        _log(f"resuming from {ckpt_dir} at step {start}/{total}")
        if sdist.is_main():  # drop log lines of steps that the resumed run will redo
            write_jsonl(metrics_path, [r for r in read_jsonl_partial(metrics_path) if r.get("step", 0) <= start])
    else:
        torch.manual_seed(cfg.seed + rank)  # dropout streams, different per rank
        if sdist.is_main():
            write_jsonl(metrics_path, [])
    sdist.barrier()

    # ---- the loop ----
    wrapped.train()
    bar = tqdm(total=total, initial=start, desc=cfg.stage, disable=not (cfg.progress and sdist.is_main()))
    last, t_start = {}, time.time()
    last_save = t_start
    for step in range(start, total):
        t0 = time.time()
        lr = lr_at(step, total, cfg.lr, cfg.min_lr, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        global_idx = batch_indices(step, cfg.batch_size, len(examples), cfg.seed)
        sums = step_losses(wrapped, cfg, examples, global_idx, rank, world, tokenizer.pad_id, device, autocast)
        reduced = _all_reduce_sum(sums)
        if not math.isfinite(reduced["loss"]):
            raise TrainingError(f"step {step + 1}: the loss is {reduced['loss']}; stopped before the optimizer "
                                f"step. The last good state is {ckpt_dir if ckpt_dir.exists() else 'none (no save yet)'}; "
                                f"lower --lr or check the data")
        grad_norm = grad_norm_and_clip(params, cfg.grad_clip)
        if not math.isfinite(grad_norm):
            raise TrainingError(f"step {step + 1}: the gradient norm is {grad_norm}; stopped before the optimizer "
                                f"step. The last good state is {ckpt_dir if ckpt_dir.exists() else 'none'}")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        dt = time.time() - t0
        n_tokens = reduced.pop("tokens")
        last = {"step": step + 1, "epoch": round((step + 1) * cfg.batch_size / len(examples), 4), "lr": lr,
                "loss": reduced.pop("loss"), "grad_norm": grad_norm, "tokens": int(n_tokens),
                "tokens_per_s": n_tokens / dt, "step_time_s": dt, **reduced}
        if sdist.is_main():
            append_jsonl(metrics_path, [last])
            shown = {"loss": f"{last['loss']:.4f}", "lr": f"{lr:.2e}"}
            if cfg.stage == "dpo":
                shown.update({k: f"{last[k]:.3f}" for k in ("rewards/accuracies", "rewards/margins",
                                                              "rewards/chosen", "rewards/rejected")})
            bar.set_postfix(shown)
        bar.update(1)

        stop_here = cfg.stop_after_steps is not None and step + 1 >= cfg.stop_after_steps and step + 1 < total
        by_steps = (step + 1) % cfg.save_every == 0
        if step + 1 < total and (stop_here or by_steps or save_due(last_save, cfg.save_every_minutes, device)):
            save_training_state(ckpt_dir, wrapped, optimizer, step + 1, cfg, tokenizer.path, device)
            last_save = time.time()
        if stop_here:
            bar.close()
            _log(f"stopped after step {step + 1} (--stop-after-steps); run again to resume")
            return {**last, "stopped": True}
    bar.close()

    # ---- the final checkpoint ----
    state = full_model_state(wrapped)
    summary = {"summary": True, "stage": cfg.stage, "steps": total, "examples": len(examples),
               "prompts_cut": cut.prompts_cut, "answers_cut": cut.answers_cut,
               "train_time_s": time.time() - t_start, **{k: v for k, v in last.items() if k != "step"}}
    if sdist.is_main():
        save_dtype = parse_dtype(cfg.save_dtype, torch.device("cpu"))
        save_hf(state, model.args, out, tokenizer_path=tokenizer.path, dtype=save_dtype)
        log_rows = read_jsonl_partial(metrics_path) + [summary]
        write_jsonl(metrics_path, log_rows)
        write_jsonl(out / "metrics.jsonl", log_rows)  # last: its presence marks the stage finished
        if ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)  # the final checkpoint supersedes the resumable state
        _log(f"wrote {out} ({total} steps, final loss {summary.get('loss', float('nan')):.4f})")
    sdist.barrier()
    return summary
