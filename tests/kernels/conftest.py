"""Shared by the kernel tests: compile kernels for a Hopper GPU (sm_90a) on a machine without one.

The Triton interpreter (TRITON_INTERPRET=1, set in tests/conftest.py) runs kernels on CPU tensors
but never lowers them to GPU code, so errors that only the real compiler sees (layouts, dot
shapes, constexpr misuse) would slip past it. `hopper_compile(body)` runs `body` in a fresh
interpreter without TRITON_INTERPRET, after a prelude that defines

    build(kernel, pointers, constants, config=None) -> the compiled kernel (its .asm["ptx"])

for a @triton.jit or @triton.autotune kernel: `pointers` maps argument names to pointer types
("*bf16"), `constants` and the config's kwargs are constexprs, other arguments are i32 (fp32 for
names ending in "scale"). The body prints "compiled" when it reaches its end.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
        root = Path(__file__).resolve().parents[2]
        proc = subprocess.run([sys.executable, "-c", PRELUDE + body], cwd=root, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]

    return run
