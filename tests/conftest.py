"""Shared pytest setup.

Triton kernels run on CPU through the interpreter: TRITON_INTERPRET must be set before
`triton` is first imported, which is why it happens here, at collection time.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def small_tokenizer() -> Path:
    """The committed 640-piece SentencePiece model of the built-in world (data/tokenizer.model): a
    real tokenizer for tests that need one but none in particular; skip when data/ is not built."""
    path = ROOT / "data" / "tokenizer.model"
    if not path.is_file():
        pytest.skip(f"{path} not found (data/ has not been built)")
    return path


def shared_file(name: str) -> Path:
    """Path to one shared reference file, or pytest.skip when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared reference file not found: {path}")
    return path


# ---------------------------------------------------------------- kernels: GPU code without a GPU
# The Triton interpreter runs kernels on CPU tensors but never lowers them to GPU code, so errors
# only the real compiler sees (layouts, dot shapes, constexpr misuse) would slip past it. The
# fixture `hopper_compile(body)` runs `body` in a fresh interpreter without TRITON_INTERPRET, after
# a prelude defining build(kernel, pointers, constants, config=None) -> the kernel compiled for
# sm_90a (its .asm["ptx"]): `pointers` maps argument names to pointer types ("*bf16"), `constants`
# and the config's kwargs are constexprs, other arguments i32 (fp32 for names ending in "scale").
# The body prints "compiled" at its end.
PRELUDE = r'''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.autotuner import Autotuner

def build(kernel, pointers, constants, config=None):
    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel  # the @triton.jit function
    constants = {**constants, **(config.kwargs if config else {})}
    sig = {n: "constexpr" if n in constants else pointers.get(n, "fp32" if n.endswith("scale") else "i32")
           for n in fn.arg_names}
    opts = {"num_warps": config.num_warps, "num_stages": config.num_stages} if config else {}
    return triton.compile(ASTSource(fn, sig, constexprs=constants), target=GPUTarget("cuda", 90, 32), options=opts)
'''


@pytest.fixture
def hopper_compile():
    pytest.importorskip("triton.backends.compiler")

    def run(body: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        proc = subprocess.run([sys.executable, "-c", PRELUDE + body], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]

    return run


def byte_level_bpe(corpus, special_tokens, vocab_size=400):
    """A small byte-level BPE `tokenizers.Tokenizer` (the layout of SmolLM2's and Llama-3's
    tokenizer.json) trained on `corpus`, its special tokens first (ids 0, 1, ...). Skips the test
    without the optional `tokenizers` package."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tk
