"""What a training run is told: TrainConfig (every setting of train.py, one field each) and its defaults.

    cfg = TrainConfig(stage="sft", data=["data/ift.jsonl", "data/eft.jsonl"], out="runs/m1", init="data/m0")

train.py has one flag per field (same name); srlm/loop.py fills the fields in directly. A field left
None takes the stage's default (STAGE_DEFAULTS: the paper's schedules for SFT and DPO).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tqdm import tqdm

from srlm import dist

# The paper's schedules (SFT 5.5e-6 -> 1.1e-6, DPO 1e-6 -> 1e-7); pretraining is ours.
STAGE_DEFAULTS = {
    "pretrain": dict(lr=3e-4, min_lr=3e-5, dropout=0.0, weight_decay=0.1),
    "sft": dict(lr=5.5e-6, min_lr=1.1e-6, dropout=0.1, weight_decay=0.0),
    "dpo": dict(lr=1e-6, min_lr=1e-7, dropout=0.0, weight_decay=0.0),
}


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN/inf loss, an inconsistent state); the message says what to do."""


@dataclass
class TrainConfig:
    stage: str
    data: list[str]
    out: str
    init: Optional[str] = None  # HF checkpoint dir to start from
    model_config: Optional[str] = None  # or fresh weights: a ModelArgs preset name or a JSON file
    tokenizer: Optional[str] = None  # tokenizer.model or tokenizer.json (default: the one in --init)
    chat: Optional[str] = None  # chat format: "llama2", "chatml" or "llama3" (default: the checkpoint's chat template)
    lr: Optional[float] = None  # None: the stage's default (STAGE_DEFAULTS)
    min_lr: Optional[float] = None
    warmup_steps: Optional[int] = None  # None: 5% of the steps
    epochs: float = 1.0
    max_steps: Optional[int] = None  # overrides epochs
    batch_size: int = 16  # sequences (DPO: pairs) per optimizer step, over all ranks
    micro_batch_size: int = 4  # sequences (pairs) per forward pass on one rank
    group_by_length: int = 0  # sort rows by length within windows of this many batches, to pad less (0: off; srlm/data.py)
    max_seq_len: Optional[int] = None  # None: the model's max_seq_len
    beta: float = 0.1
    label_smoothing: float = 0.0
    loss: str = "dpo"  # dpo | ipo
    nll_alpha: float = 0.0  # DPO + NLL: weight of the chosen answer's per-token NLL (srlm/dpo.py)
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
        if not self.nll_alpha >= 0:
            raise ValueError(f"--nll-alpha must be >= 0, got {self.nll_alpha}")
        if self.batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError("--batch-size and --micro-batch-size must be positive")
        if self.group_by_length < 0:
            raise ValueError(f"--group-by-length must be >= 0, got {self.group_by_length}")
        if self.save_every < 1 or not self.save_every_minutes >= 0:
            raise ValueError("--save-every must be >= 1 and --save-every-minutes >= 0")
        for name in (self.dtype, self.save_dtype):  # bf16 needs no loss scaling; fp16 would
            if name not in (None, "fp32", "bf16", "float32", "bfloat16"):
                raise ValueError(f"--dtype must be fp32 or bf16, got {name!r}")


def log(msg: str) -> None:
    """One line from rank 0, printed above the progress bar."""
    if dist.is_main():
        tqdm.write(f"[train] {msg}")
