"""The model to train: built in one process, or sharded over many with FSDP2 (under torchrun).

    model = build_model(cfg, tokenizer, source)                                   # one process
    wrapped = build_sharded_model(cfg, tokenizer, source, device, world, dtype)   # torchrun

Under torchrun every transformer block is sharded with FSDP2 `fully_shard`, then the root (the
LogprobModel wrapper, which owns the embeddings, final norm and output head). The model is built
on the meta device and only each rank's shards are allocated; each rank reads its own rows of a
Hugging Face checkpoint, while fresh weights and Meta checkpoints come from the one full CPU copy
that rank 0 initialises or reads. On GPU, bf16 mixed precision keeps fp32 master weights
(MixedPrecisionPolicy). The training loop that uses these is srlm/trainer.py.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from srlm import dist as sdist
from srlm.checkpoint import load_hf_args, load_hf_shards, load_model
from srlm.io import DataError, read_text
from srlm.logprobs import LogprobModel, unwrap_state_dict
from srlm.model import Llama, ModelArgs, precompute_freqs_cis
from srlm.tokenizer import Tokenizer
from srlm.train_config import TrainConfig


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# What a ModelArgs field (by its annotation) may hold in a --model-config JSON file, and the words for the error.
_FIELD_CHECKS = {
    "int": (_positive_int, "a positive integer"),
    "Optional[int]": (lambda v: v is None or _positive_int(v), "a positive integer or null"),
    "float": (_number, "a number"),
    "Optional[float]": (lambda v: v is None or _number(v), "a number or null"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
}


def fresh_model_args(spec: str, tokenizer: Tokenizer, overrides: dict) -> ModelArgs:
    """ModelArgs from a preset name (vocab_size follows the tokenizer) or a JSON file of fields."""
    path = Path(spec)
    if path.suffix == ".json" or path.is_file():
        try:
            fields = json.loads(read_text(path))
        except FileNotFoundError:
            raise DataError(f"{path}: model config file not found") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: malformed JSON ({e})") from None
        if not isinstance(fields, dict):
            raise DataError(f"{path}: expected a JSON object of ModelArgs fields, got {type(fields).__name__}")
        known = set(ModelArgs.__dataclass_fields__)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise DataError(f"{path}: unknown ModelArgs field(s) {unknown}")
        for key, value in fields.items():  # a wrong type is named here, not deep inside ModelArgs' arithmetic
            ok, words = _FIELD_CHECKS[ModelArgs.__dataclass_fields__[key].type]
            if not ok(value):
                raise DataError(f"{path}: key {key!r} must be {words}, got {json.dumps(value)}")
        try:
            args = ModelArgs(**{**fields, **overrides})
        except ValueError as e:  # inconsistent sizes (dim not divisible by n_heads, ...)
            raise DataError(f"{path}: {e}") from None
        if args.vocab_size < tokenizer.vocab_size:
            raise DataError(f"{path}: vocab_size={args.vocab_size} is smaller than the tokenizer's "
                            f"{tokenizer.vocab_size}")
        return args
    return ModelArgs.preset(spec, vocab_size=tokenizer.vocab_size, **overrides)


def arg_overrides(cfg: TrainConfig) -> dict:
    """ModelArgs fields the command line sets on top of the checkpoint's or preset's."""
    overrides = {"dropout": cfg.dropout}
    if cfg.attn_impl is not None:
        overrides["attn_impl"] = cfg.attn_impl
    return overrides


def build_model(cfg: TrainConfig, tokenizer: Tokenizer, source: Optional[Path]) -> Llama:
    """The model to train, on the CPU in fp32: from `source` (an HF dir) or fresh from cfg.model_config."""
    overrides = arg_overrides(cfg)
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
        full, args = None, load_hf_args(source, **arg_overrides(cfg))
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


def enable_activation_checkpointing(model: Llama) -> None:
    """Recompute each transformer block in the backward pass instead of storing its activations."""
    from torch.utils.checkpoint import checkpoint

    for block in model.layers:
        inner = block.forward
        block.forward = lambda *args, _inner=inner: checkpoint(_inner, *args, use_reentrant=False)


def state_dict_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(wrapped: LogprobModel) -> dict:
    """Full (unsharded) Llama state dict on the CPU; complete on rank 0, empty on the others."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return unwrap_state_dict(get_model_state_dict(wrapped, options=state_dict_options()))


def set_grad_sync(wrapped: nn.Module, sync: bool) -> None:
    """FSDP2: whether the next backward reduce-scatters its gradients across ranks (one process: no-op)."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(wrapped, FSDPModule):
        wrapped.set_requires_gradient_sync(sync)  # recurses into every sharded block


def reshard(wrapped: nn.Module) -> None:
    """Free the parameters FSDP2 gathered for forward-only passes (the root keeps its own gathered
    after a forward, expecting a backward); a later training step must start from the sharded state,
    or the root's gradients are never reduced across ranks."""
    from torch.distributed.fsdp import FSDPModule

    for module in wrapped.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
