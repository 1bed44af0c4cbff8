"""SentencePiece tokenizer and the Llama-2 chat format for one turn.

    <s>[INST] {user} [/INST] {answer} </s>
    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s>

The prompt and the answer are encoded separately and their ids concatenated. Encoding the joined
string instead can merge tokens across the join, and then the prompt ids seen in training differ
from the ones the sampler feeds at generation time. SentencePiece's leading "▁" on the answer's
first piece stands for the space after [/INST].

Padding: Llama 2 has no pad token. We fill tensors with `pad_id` (0, <unk>, distinct from eos=2)
and always take validity from lengths and masks, never from comparing ids to pad, so EOS is never
mistaken for padding and always stays in the loss.

    tok = Tokenizer("../shared/data/llama2_tokenizer.model")
    ids, loss_mask = tok.encode_dialog("Name a prime.", "7 is prime.")
    python -m srlm.tokenizer path/to/tokenizer.model "some text"      # prints ids and pieces
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import sentencepiece as spm

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


class Tokenizer:
    def __init__(self, model_path):
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path}: tokenizer model not found")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_path))
        except Exception as e:
            raise ValueError(f"{model_path}: not a SentencePiece model ({e})") from None
        self.path = str(model_path)
        self.vocab_size: int = self.sp.vocab_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = 0  # only fills tensors; see the module docstring
        if self.bos_id < 0 or self.eos_id < 0:
            raise ValueError(f"{model_path}: the tokenizer needs bos and eos ids (got {self.bos_id}, {self.eos_id})")
        if self.pad_id in (self.bos_id, self.eos_id):
            raise ValueError(f"{model_path}: id 0 is bos or eos; srlm pads with 0 and needs it distinct")

    @classmethod
    def from_dir(cls, model_dir) -> "Tokenizer":
        """The tokenizer.model that sits in a checkpoint directory."""
        path = Path(model_dir) / "tokenizer.model"
        if not Path(model_dir).is_dir():
            raise FileNotFoundError(f"{model_dir}: model directory not found")
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir}: no tokenizer.model in this model directory "
                                    f"(copy the model's tokenizer.model there, or pass --tokenizer)")
        return cls(path)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([i for i in ids if 0 <= i < self.vocab_size])

    def encode_prompt(self, user: str, system: Optional[str] = None) -> list[int]:
        """Ids of `<s>[INST] {user} [/INST]`, the part of a turn the model is given."""
        content = user.strip()
        if system:
            content = f"{B_SYS}{system.strip()}{E_SYS}{content}"
        return self.encode(f"{B_INST} {content} {E_INST}", bos=True)

    def encode_answer(self, answer: str) -> list[int]:
        """Ids of `{answer} </s>`, the part of a turn the model learns to write."""
        return self.encode(answer.strip(), eos=True)

    def encode_dialog(self, user: str, answer: str, system: Optional[str] = None) -> tuple[list[int], list[int]]:
        """(ids, loss_mask): prompt ids + answer ids; the mask is 1 on exactly the answer tokens and EOS."""
        prompt_ids = self.encode_prompt(user, system)
        answer_ids = self.encode_answer(answer)
        return prompt_ids + answer_ids, [0] * len(prompt_ids) + [1] * len(answer_ids)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m srlm.tokenizer TOKENIZER_MODEL TEXT")
    tok = Tokenizer(sys.argv[1])
    ids = tok.encode(sys.argv[2])
    print(ids)
    print([tok.sp.id_to_piece(i) for i in ids])
