"""Loading a model to sample from (generation, judging, evaluation), and the dtype defaults.

    from srlm.loading import load_for_inference
    model, tokenizer = load_for_inference("runs/default/m1", device="cpu")

Precision: bfloat16 on a GPU (the model's native training precision, half the memory), float32
on a CPU (where bfloat16 matmuls are slow and gain nothing). Training picks its compute dtype
with the same rule (`default_dtype`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from srlm.checkpoint import load_model
from srlm.tokenizer import load_tokenizer

# Names a command line may use for a dtype (generate.py/judge.py spell them out, train.py short).
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bfloat16 on CUDA, float32 everywhere else."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def parse_dtype(name: Optional[str], device: torch.device | str) -> torch.dtype:
    """A dtype name (None: the device's default), or ValueError naming the choices."""
    if name is None:
        return default_dtype(device)
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def fingerprint(model) -> str:
    """A short hash of a model's weights, so resumed results are reused only from the same model.

    Hashes every tensor's name, shape, dtype and up to 64 of its first values (enough to tell
    a retrained or different checkpoint apart; reading every weight would cost a full pass).
    """
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        head = t.detach().reshape(-1)[:64].float().cpu()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(head.numpy().tobytes())
    return h.hexdigest()[:16]


def model_id(model, tok) -> str:
    """What a generated row depends on besides its inputs: the weights and the chat format that
    wraps its prompt (the same checkpoint run with --chat chatml writes different rows)."""
    return f"{fingerprint(model)}/{tok.chat.name}"


def load_for_inference(model_dir, tokenizer_path=None, device="cpu", dtype: Optional[torch.dtype] = None,
                       chat: Optional[str] = None):
    """(model in eval mode, tokenizer) from a checkpoint directory.

    The tokenizer is read first, so a directory without one fails before the weights are loaded;
    `tokenizer_path` names one kept elsewhere (Meta's download): tokenizer.model or tokenizer.json.
    The model's vocabulary must hold every id the tokenizer can produce.
    """
    tok = load_tokenizer(tokenizer_path or model_dir, chat)  # tokenizer.model or tokenizer.json, with the chat format
    device = torch.device(device)
    model = load_model(model_dir, dtype=dtype or default_dtype(device), device=device).eval()
    if model.args.vocab_size < tok.vocab_size:
        raise ValueError(f"{Path(model_dir)}: vocab_size {model.args.vocab_size} is smaller than the tokenizer's "
                         f"{tok.vocab_size} ({tok.path})")
    return model, tok
