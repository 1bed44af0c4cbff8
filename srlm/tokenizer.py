"""SentencePiece tokenizer, and `load_tokenizer` for any checkpoint's tokenizer and chat format.

A chat turn is encoded by the checkpoint's chat format (srlm/chat.py), Llama-2's by default:

    <s>[INST] {user} [/INST] {answer} </s>
    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s>

A checkpoint with `tokenizer.model` gets this SentencePiece tokenizer; one with only
`tokenizer.json` (byte-level BPE, e.g. SmolLM2, Llama 3) gets srlm/hf_tokenizer.py, which needs the
optional `tokenizers` package. The prompt and the answer are encoded separately and their ids concatenated. Encoding the joined
string instead can merge tokens across the join, and then the prompt ids seen in training differ
from the ones the sampler feeds at generation time. SentencePiece's leading "▁" on the answer's
first piece stands for the space after [/INST].

Padding: Llama 2 has no pad token. We fill tensors with `pad_id` (0, <unk>, distinct from eos=2)
and always take validity from lengths and masks, never from comparing ids to pad, so EOS is never
mistaken for padding and always stays in the loss.

    tok = Tokenizer("../shared/data/llama2_tokenizer.model")
    ids, loss_mask = tok.encode_dialog("Name a prime.", "7 is prime.")
    tok = load_tokenizer("path/to/checkpoint")        # tokenizer.model or tokenizer.json + chat template
    python -m srlm.tokenizer path/to/tokenizer.model "some text"      # prints ids and pieces
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import sentencepiece as spm

from srlm.chat import ChatMethods, format_from_template, get_format, read_chat_template


class Tokenizer(ChatMethods):
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
    def from_dir(cls, model_dir, chat: Optional[str] = None):
        """The tokenizer of a checkpoint directory, with its chat format (see load_tokenizer)."""
        return load_tokenizer(model_dir, chat)

    def token_id(self, piece: str) -> int:
        """The id of one piece (a chat marker such as <|im_start|>); an error if it is not in the vocabulary."""
        i = self.sp.piece_to_id(piece)
        if i == self.sp.unk_id() and piece != self.sp.id_to_piece(i):
            raise ValueError(f"{self.path}: the tokenizer has no piece {piece!r} (the chat format needs it)")
        return i

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.sp.decode([i for i in ids if 0 <= i < self.vocab_size])

    def special_ids(self) -> dict:
        """The ids a saved config.json names."""
        return {"bos_token_id": self.bos_id, "eos_token_id": self.eos_id}


def load_tokenizer(path, chat: Optional[str] = None):
    """The tokenizer of a checkpoint directory (or a tokenizer.model / tokenizer.json file), with the
    chat format of its chat template, or the format named by `chat` ("llama2", "chatml").

    tokenizer.model wins when both files are there (SentencePiece is srlm's default).
    """
    path = Path(path)
    if not path.exists():
        what = "tokenizer file" if path.suffix in (".model", ".json") else "model directory"
        raise FileNotFoundError(f"{path}: {what} not found")
    if path.is_dir():
        candidates = [path / "tokenizer.model", path / "tokenizer.json"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path}: no tokenizer.model or tokenizer.json in this model directory "
                                    f"(copy the model's tokenizer there, or pass --tokenizer)")
        path = found
    if path.suffix == ".json":
        from srlm.hf_tokenizer import HFTokenizer  # needs the optional `tokenizers` package

        tok = HFTokenizer(path)
    else:
        tok = Tokenizer(path)
    # The chat template only counts beside a checkpoint's own tokenizer file, not beside any file.
    template, source = read_chat_template(path.parent) if path.name in ("tokenizer.model", "tokenizer.json") else (None, None)
    tok.set_chat(get_format(chat) if chat else format_from_template(template, source))
    return tok


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m srlm.tokenizer TOKENIZER_MODEL TEXT")
    tok = Tokenizer(sys.argv[1])
    ids = tok.encode(sys.argv[2])
    print(ids)
    print([tok.sp.id_to_piece(i) for i in ids])
