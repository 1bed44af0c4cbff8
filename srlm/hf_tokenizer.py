"""A checkpoint's `tokenizer.json` (byte-level BPE: SmolLM2, Llama 3, Qwen...) through the `tokenizers` library.

`tokenizers` is the field's standard reader of this format and an optional dependency of srlm:
it is imported only when a checkpoint has a tokenizer.json and no tokenizer.model
(srlm/tokenizer.py's load_tokenizer decides). The interface is that of srlm/tokenizer.py's
SentencePiece Tokenizer: encode(text, bos, eos), decode, bos_id, eos_id, pad_id, vocab_size, and
the chat-turn methods of srlm/chat.py.

Special tokens come from the checkpoint, never from a guess: `bos_token` / `eos_token` of
tokenizer_config.json (a string or {"content": ...}), else config.json's bos_token_id /
eos_token_id. `encode(text, bos=True)` prepends BOS only when the tokenizer's own post-processor
does (Llama 3 writes <|begin_of_text|>; SmolLM2 writes nothing), so a plain continuation starts
exactly as transformers would start it. Text that spells a special token ("<|im_end|>") becomes that
token, as in transformers.

Padding: as in srlm/tokenizer.py, `pad_id` only fills tensors; it is the smallest id that is
neither BOS nor EOS, and validity always comes from lengths and masks.

    python -m srlm.hf_tokenizer path/to/checkpoint "some text"      # prints ids and pieces
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from srlm.chat import ChatMethods
from srlm.io import read_text


def _read_json(file: Path) -> dict:
    if not file.is_file():
        return {}
    try:
        data = json.loads(read_text(file))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: malformed JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


class HFTokenizer(ChatMethods):
    def __init__(self, path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tokenizer.json not found")
        try:
            from tokenizers import Tokenizer as TokenizersTokenizer
        except ImportError:
            raise ImportError(f"{path}: reading tokenizer.json needs the optional `tokenizers` package "
                              f"(pip install tokenizers)") from None
        try:
            self.tk = TokenizersTokenizer.from_file(str(path))
        except Exception as e:
            raise ValueError(f"{path}: not a readable tokenizer.json ({e})") from None
        self.path = str(path)
        self.vocab_size: int = self.tk.get_vocab_size(with_added_tokens=True)
        tok_config = _read_json(path.parent / "tokenizer_config.json")
        model_config = _read_json(path.parent / "config.json")
        self.bos_id: Optional[int] = self._special(tok_config, model_config, "bos")
        self.eos_id: Optional[int] = self._special(tok_config, model_config, "eos")
        self.tokenizer_pad_id = self._special(tok_config, model_config, "pad")
        if self.eos_id is None:
            raise ValueError(f"{path}: no eos token: neither tokenizer_config.json's eos_token nor config.json's "
                             f"eos_token_id names one")
        # BOS is written only if the tokenizer's own post-processor writes it (see the module docstring).
        plain, full = self.tk.encode("a", add_special_tokens=False).ids, self.tk.encode("a").ids
        self.add_bos = len(full) > len(plain) and full[0] == self.bos_id
        self.pad_id: int = next(i for i in range(3) if i not in (self.bos_id, self.eos_id))

    def _special(self, tok_config: dict, model_config: dict, kind: str) -> Optional[int]:
        token = tok_config.get(f"{kind}_token")
        if isinstance(token, dict):
            token = token.get("content")
        if token is not None:
            return self.token_id(token)
        i = model_config.get(f"{kind}_token_id")
        if isinstance(i, list):  # several stop ids (Llama 3's generation config style): the first ends a turn
            i = i[0] if i else None
        if i is not None and not (isinstance(i, int) and 0 <= i < self.vocab_size):
            raise ValueError(f"{self.path}: config.json {kind}_token_id={i!r} is not an id of this tokenizer")
        return i

    @classmethod
    def from_dir(cls, model_dir) -> "HFTokenizer":
        return cls(Path(model_dir) / "tokenizer.json")

    def token_id(self, piece: str) -> int:
        i = self.tk.token_to_id(piece)
        if i is None:
            raise ValueError(f"{self.path}: the tokenizer has no token {piece!r}")
        return i

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.tk.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos and self.add_bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.tk.decode([i for i in ids if 0 <= i < self.vocab_size], skip_special_tokens=skip_special)

    def special_ids(self) -> dict:
        """The ids a saved config.json names."""
        ids = {"bos_token_id": self.bos_id, "eos_token_id": self.eos_id}
        if self.tokenizer_pad_id is not None:
            ids["pad_token_id"] = self.tokenizer_pad_id
        return ids


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m srlm.hf_tokenizer MODEL_DIR TEXT")
    tok = HFTokenizer.from_dir(sys.argv[1])
    ids = tok.encode(sys.argv[2])
    print(ids)
    print([tok.tk.id_to_token(i) for i in ids])
