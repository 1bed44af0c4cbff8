"""Resumable training state: what a killed run needs to continue exactly where it stopped.

Files, for `--out DIR`:
  DIR/                      the final Hugging Face checkpoint + metrics.jsonl, written at the end
  DIR.train/metrics.jsonl   one JSON line per step while training (copied into DIR at the end)
  DIR.train/checkpoint/     latest resumable state, swapped in atomically: model/ (HF dir, fp32),
                            optimizer.pt (full AdamW state) and trainer.pt (step, RNG of every rank,
                            settings), both read with torch.load(weights_only=True)

The state is saved every `save_every` steps and every `save_every_minutes`; a resumed run must
use the settings it was started with (RESUME_KEYS), and restores every rank's RNG, so the
resumed run computes what the uninterrupted one would have. The loop is srlm/trainer.py.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from srlm import dist as sdist
from srlm.checkpoint import save_hf
from srlm.fsdp import full_model_state, state_dict_options
from srlm.io import DataError, read_jsonl_partial, replace_dir
from srlm.logprobs import LogprobModel
from srlm.train_config import TrainConfig, TrainingError, log


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.getrng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_training_state(ckpt_dir: Path, wrapped: LogprobModel, optimizer, step: int, cfg: TrainConfig,
                        tokenizer_path: str, device: torch.device) -> None:
    """Write model + optimizer + step + RNG to ckpt_dir atomically (a temp folder renamed into place)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model_state = full_model_state(wrapped)
    optim_state = get_optimizer_state_dict(wrapped, optimizer, options=state_dict_options())
    rngs = sdist.gather_objects(rng_state(device))
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
RESUME_KEYS = ("stage", "data", "init", "model_config", "chat", "lr", "min_lr", "warmup_steps", "epochs", "max_steps",
               "batch_size", "group_by_length", "max_seq_len", "beta", "label_smoothing", "loss", "nll_alpha", "dropout", "weight_decay",
               "grad_clip", "seed")


def check_resume_config(ckpt_dir: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a state saved with other settings (the result would match neither run)."""
    saved = json.loads(torch.load(ckpt_dir / "trainer.pt", map_location="cpu", weights_only=True)["config"])
    now = asdict(cfg)
    defaults = {f.name: f.default for f in fields(TrainConfig)}  # a key added later was its default then
    diff = [f"{k}: saved {saved.get(k, defaults[k])!r}, now {now[k]!r}" for k in RESUME_KEYS
            if saved.get(k, defaults[k]) != now[k]]
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
        set_rng_state(state["rng"][rank], device)
    else:
        log(f"saved with {state['world_size']} processes, resumed with {world}: RNG streams start afresh")
        torch.manual_seed(1_000_003 * state["step"] + rank)
    return int(state["step"])


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
