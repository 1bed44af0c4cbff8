"""Chat formats: how one user turn (with an optional system prompt) and its answer become token ids.

    llama2  <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer}</s>
    chatml  <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{user}<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>
    llama3  <|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n{user}<|eot_id|>
            <|start_header_id|>assistant<|end_header_id|>\\n\\n{answer}<|eot_id|>   (a system turn, when given, first)

A format is chosen from the checkpoint's chat template (`chat_template.jinja`, or `chat_template` in
`tokenizer_config.json`) by `format_from_template`, or by name (`--chat llama2|chatml|llama3`); a checkpoint
with neither gets llama2, srlm's own format. We recognise a template by its markers instead of
running it (that would need jinja2): the real-model test checks that our prompt ids equal
transformers' `apply_chat_template(..., add_generation_prompt=True)`.

Prompt and answer are encoded separately and concatenated (see srlm/tokenizer.py): the prompt ids are
exactly what the sampler is given, and the loss mask is 1 on exactly the answer ids, which end with
the end-of-turn token (`tok.eos_id`: </s> for llama2, <|im_end|> for chatml, <|eot_id|> for llama3).

Each format works with any tokenizer object that has encode(text, bos=, eos=), bos_id, eos_id and
token_id(piece) (srlm/tokenizer.py for SentencePiece, srlm/hf_tokenizer.py for tokenizer.json).

    python -m srlm.chat path/to/checkpoint "What is 2+2?"     # the prompt the checkpoint's format builds
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Optional

from srlm.io import read_text


class Llama2Chat:
    """Meta's Llama-2 chat format: BOS, then [INST] ... [/INST]; the answer ends with EOS.

    The user text is stripped, as Meta's reference and the Llama-2 template's `| trim` do.
    SentencePiece's leading "▁" on the answer's first piece stands for the space after [/INST].
    """

    name = "llama2"

    def end_id(self, tok) -> int:
        return tok.eos_id

    def encode_prompt(self, tok, user: str, system: Optional[str] = None) -> list[int]:
        content = user.strip()
        if system:
            content = f"<<SYS>>\n{system.strip()}\n<</SYS>>\n\n{content}"
        return [tok.bos_id] + tok.encode(f"[INST] {content} [/INST]")

    def encode_answer(self, tok, answer: str) -> list[int]:
        return tok.encode(answer.strip()) + [self.end_id(tok)]


class ChatML:
    """ChatML (SmolLM, Qwen, ...): <|im_start|>{role}\\n{content}<|im_end|>\\n per message.

    Many ChatML templates insert a default system message when the conversation has none
    (SmolLM2: "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
    `default_system` carries it. The user text is kept as given, as those templates do.
    Ids are built piece by piece around the markers, which the tokenizer keeps as single tokens;
    since a tokenizer splits its text at those special tokens before anything else, this equals
    encoding the whole string.
    """

    name = "chatml"

    def __init__(self, default_system: Optional[str] = None):
        self.default_system = default_system

    def end_id(self, tok) -> int:
        return tok.token_id("<|im_end|>")

    def _message(self, tok, role: str, content: str) -> list[int]:
        return [tok.token_id("<|im_start|>")] + tok.encode(f"{role}\n{content}") + [self.end_id(tok)] + tok.encode("\n")

    def encode_prompt(self, tok, user: str, system: Optional[str] = None) -> list[int]:
        system = system if system is not None else self.default_system
        ids = self._message(tok, "system", system) if system is not None else []
        ids += self._message(tok, "user", user)
        return ids + [tok.token_id("<|im_start|>")] + tok.encode("assistant\n")

    def encode_answer(self, tok, answer: str) -> list[int]:
        return tok.encode(answer.strip()) + [self.end_id(tok)]


class Llama3Chat:
    """Meta's Llama-3 format: BOS, then per message <|start_header_id|>{role}<|end_header_id|>, two
    newlines, the content trimmed (the template's `| trim`), <|eot_id|>. The answer ends with
    <|eot_id|>, where generation stops. The markers are single tokens of the tokenizer, so each text
    piece between them is encoded on its own, as the tokenizer does with the whole string.

    Llama 3.1 and later templates add a system message stamped with today's date; that one is not
    reproduced (format_from_template refuses it; --chat llama3 chooses this plain format).
    """

    name = "llama3"

    def end_id(self, tok) -> int:
        return tok.token_id("<|eot_id|>")

    def _header(self, tok, role: str) -> list[int]:
        return [tok.token_id("<|start_header_id|>")] + tok.encode(role) + [tok.token_id("<|end_header_id|>")]

    def encode_prompt(self, tok, user: str, system: Optional[str] = None) -> list[int]:
        if tok.bos_id is None:
            raise ValueError(f"{tok.path}: the llama3 chat format needs a bos token (<|begin_of_text|>)")
        ids = [tok.bos_id]
        for role, content in ([("system", system)] if system else []) + [("user", user)]:
            ids += self._header(tok, role) + tok.encode("\n\n" + content.strip()) + [self.end_id(tok)]
        return ids + self._header(tok, "assistant") + tok.encode("\n\n")

    def encode_answer(self, tok, answer: str) -> list[int]:
        return tok.encode(answer.strip()) + [self.end_id(tok)]


FORMATS = {"llama2": Llama2Chat, "chatml": ChatML, "llama3": Llama3Chat}


class ChatMethods:
    """What a tokenizer gains from a chat format (`self.chat`): one turn as prompt/answer ids."""

    chat = Llama2Chat()

    def set_chat(self, fmt) -> None:
        """Use `fmt`; eos_id becomes its end-of-turn token, where the sampler stops and answers end."""
        self.chat = fmt
        self.eos_id = fmt.end_id(self)

    def encode_prompt(self, user: str, system: Optional[str] = None) -> list[int]:
        """The part of a turn the model is given, up to where its answer starts."""
        return self.chat.encode_prompt(self, user, system)

    def encode_answer(self, answer: str) -> list[int]:
        """The part of a turn the model learns to write: the answer and the end-of-turn token."""
        return self.chat.encode_answer(self, answer)

    def encode_dialog(self, user: str, answer: str, system: Optional[str] = None) -> tuple[list[int], list[int]]:
        """(ids, loss_mask): prompt ids + answer ids; the mask is 1 on exactly the answer and its end token."""
        prompt_ids = self.encode_prompt(user, system)
        answer_ids = self.encode_answer(answer)
        return prompt_ids + answer_ids, [0] * len(prompt_ids) + [1] * len(answer_ids)


def get_format(name: str):
    if name not in FORMATS:
        raise ValueError(f"unknown chat format {name!r}; choose one of {sorted(FORMATS)}")
    return FORMATS[name]()


def format_from_template(template: Optional[str], source="chat template"):
    """The format a Jinja chat template writes; llama2 when there is no template."""
    if template is None:
        return Llama2Chat()
    if "<|im_start|>" in template:
        # The default system message, if the template writes one: a literal '<|im_start|>system\n...'
        # string in the template (with a real newline or the two characters \n).
        m = re.search(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", template, re.DOTALL)
        return ChatML(default_system=m.group(1) if m else None)
    if "<|start_header_id|>" in template:
        if "Cutting Knowledge Date" in template:
            raise ValueError(f"{source}: this Llama-3.1+ template writes a dated system message srlm does not "
                             f"reproduce; pass --chat llama3 for the plain Llama-3 format")
        return Llama3Chat()
    if "[INST]" in template:
        return Llama2Chat()
    raise ValueError(f"{source}: this chat template is neither ChatML (<|im_start|>), Llama-3 "
                     f"(<|start_header_id|>) nor Llama-2 ([INST]); pass the format by name ({sorted(FORMATS)})")


def read_chat_template(model_dir) -> tuple[Optional[str], Optional[Path]]:
    """(template text, file it came from) of a checkpoint directory, or (None, None)."""
    model_dir = Path(model_dir)
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return read_text(jinja), jinja
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        try:
            template = json.loads(read_text(config)).get("chat_template")
        except (json.JSONDecodeError, AttributeError) as e:
            raise ValueError(f"{config}: malformed JSON ({e})") from None
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if template is not None and not isinstance(template, str):
            raise ValueError(f"{config}: chat_template is {type(template).__name__}, expected text")
        if template:
            return template, config
    return None, None


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m srlm.chat MODEL_DIR USER_TEXT")
    from srlm.tokenizer import load_tokenizer

    tok = load_tokenizer(sys.argv[1])
    ids = tok.encode_prompt(sys.argv[2])
    print(f"{tok.chat.name}: {ids}\n{tok.decode(ids, skip_special=False)!r}")
