"""Self-instruction, the pure parts: few-shot prompt building, parsing, and the duplicate filter.

Step 1 of each self-rewarding iteration writes new prompts by few-shot prompting (paper: 8 examples,
6 from the IFT seed and 2 from prompts generated earlier; sampled at temperature 0.6, top-p 0.9),
then drops near-duplicates and prompts of bad length. srlm/prompts.py runs the model;
everything here is plain Python on strings, so it is tested without a model.

The few-shot text is a numbered list that the model continues:

    Here are requests that people sent to an AI assistant. ...

    Task 1: <example>

    Task 2: <example>
    ...
    Task 9:

Blank lines inside an example are collapsed, so in the list a blank line (or a new "Task N:"
label) always means the task has ended; `parse_instruction` cuts there, and STOP_STRINGS let the
sampler stop as soon as either appears.

Chat format or not: we feed this text as a plain continuation (BOS + text, no [INST] ... [/INST]).
The list pattern is something a base model and a chat-tuned model both continue well, and the
answer needs no unwrapping ("Sure! Here is a new task: ..."). `--chat-format` in generate.py wraps
it as one instruction turn instead, closer to giving the fine-tuned model a request;
`parse_instruction` then also strips a leading "Task 9:" that such a model tends to repeat.

Near-duplicates: ROUGE-L between word sequences, F = 2 * LCS(a, b) / (len(a) + len(b)), the
longest common subsequence computed by hand with dynamic programming (Self-Instruct drops a new
instruction whose ROUGE-L with any pool entry is >= 0.7). An exact, cheap upper bound
(2 * |common words as multisets| / (len(a) + len(b)) >= F) skips the LCS for most pool entries.

    python -m srlm.self_instruct      # prints a few-shot prompt built from a toy pool
"""
from __future__ import annotations

import random
import re
from collections import Counter
from typing import Optional, Sequence

HEADER = ("Here are requests that people sent to an AI assistant. They cover many subjects and kinds of "
          "help: questions, explanations, advice, writing, planning, coding and more. Each one stands on "
          "its own and is written the way a real person would ask it.\n\n")
STOP_STRINGS = ("\n\n", "\nTask ")
_TASK_LABEL = re.compile(r"Task\s+\d+\s*:")
_BLANK_LINE = re.compile(r"\n\s*\n")
_TASK_END = re.compile(r"\n\s*\n|Task\s+\d+\s*:|\nTask\b")  # blank line, a label, or a cut-off "\nTask"


def format_task(text: str) -> str:
    """One example as it appears in the list: trimmed, blank lines collapsed to single newlines."""
    return _BLANK_LINE.sub("\n", text.strip())


def build_few_shot_prompt(examples: Sequence[str], header: str = HEADER) -> str:
    """The text the model continues: header, "Task k: example" for each, then the open next label."""
    body = "".join(f"Task {k}: {format_task(e)}\n\n" for k, e in enumerate(examples, start=1))
    return f"{header}{body}Task {len(examples) + 1}:"


def choose_examples(seed_pool: Sequence[str], generated_pool: Sequence[str], rng: random.Random,
                    n_shot: int = 8, n_generated: int = 2) -> list[str]:
    """n_shot examples: n_generated from earlier generated prompts (as many as exist), the rest from
    the seed pool, in a shuffled order so the model does not learn a position for either kind."""
    n_gen = min(n_generated, len(generated_pool), n_shot)
    n_seed = n_shot - n_gen
    if len(seed_pool) < n_seed:
        raise ValueError(f"the seed pool has {len(seed_pool)} prompts; {n_seed} are needed per few-shot prompt")
    examples = rng.sample(list(seed_pool), n_seed) + rng.sample(list(generated_pool), n_gen)
    rng.shuffle(examples)
    return examples


def parse_instruction(generation: str) -> Optional[str]:
    """The new task out of the model's continuation of "Task N:", or None when there is none.

    Drops a repeated leading "Task N:" label, then keeps the text up to the first blank line, the
    next "Task N:" label, or a line starting with "Task" (where the sampler stops on "\nTask ").
    """
    text = generation.strip()
    label = _TASK_LABEL.match(text)
    if label:
        text = text[label.end():]
    text = _TASK_END.split(text, maxsplit=1)[0]
    text = text.strip()
    return text or None


# ----------------------------------------------------------------------------- similarity


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore); punctuation and spacing are ignored."""
    return re.findall(r"\w+", text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, dynamic programming over one row at a time.

    row[j] = LCS of a[:i] and b[:j]; for a[i-1] == b[j-1] it extends the diagonal, else it takes the
    longer of dropping the last item of a or of b.
    """
    if len(a) < len(b):
        a, b = b, a  # keep the row over the shorter sequence
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(above, row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(a: Sequence[str], b: Sequence[str]) -> float:
    """ROUGE-L F1 of two word sequences: 2 * LCS / (len(a) + len(b)); 0 when both are empty."""
    if not a and not b:
        return 0.0
    return 2.0 * lcs_length(a, b) / (len(a) + len(b))


class DuplicateFilter:
    """A pool of texts; `check(text)` says whether a new text repeats one of them.

    Exact duplicates compare the normalised word sequence (case, punctuation and spacing ignored);
    near duplicates have ROUGE-L >= threshold with some pool entry.
    """

    def __init__(self, texts: Sequence[str] = (), threshold: float = 0.7):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"similarity threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self._keys: set[str] = set()
        self._entries: list[tuple[list[str], Counter]] = []
        for t in texts:
            self.add(t)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, text: str) -> None:
        w = words(text)
        self._keys.add(" ".join(w))
        self._entries.append((w, Counter(w)))

    def most_similar(self, text: str) -> float:
        """The highest ROUGE-L of `text` against the pool, where it could reach the threshold.

        Entries whose upper bound (shared words) is under the threshold are skipped, so a value
        below the threshold means "no near duplicate", not necessarily the exact maximum.
        """
        w = words(text)
        counts = Counter(w)
        best = 0.0
        for other, other_counts in self._entries:
            total = len(w) + len(other)
            if total == 0 or 2.0 * min(len(w), len(other)) / total < self.threshold:
                continue  # the lengths alone are too different
            if 2.0 * sum((counts & other_counts).values()) / total < self.threshold:
                continue  # too few shared words for the LCS to reach the threshold
            best = max(best, rouge_l(w, other))
            if best >= self.threshold:
                break
        return best

    def check(self, text: str) -> Optional[str]:
        """None if `text` is new, else "exact_duplicate" or "near_duplicate"."""
        if " ".join(words(text)) in self._keys:
            return "exact_duplicate"
        if self.most_similar(text) >= self.threshold:
            return "near_duplicate"
        return None


def rejection_reason(text: Optional[str], dup_filter: DuplicateFilter, min_words: int = 3,
                     max_words: int = 150) -> Optional[str]:
    """Why a parsed instruction is rejected ("unparsable", "too_short", "too_long", "exact_duplicate",
    "near_duplicate"), or None when it is kept. Lengths count `words()`."""
    if text is None:
        return "unparsable"
    n = len(words(text))
    if n < min_words:
        return "too_short"
    if n > max_words:
        return "too_long"
    return dup_filter.check(text)


if __name__ == "__main__":
    pool = ["What is the capital of Peru?", "Write a haiku about autumn rain.",
            "How do I reverse a list in Python?", "Give me three tips for a job interview."]
    print(build_few_shot_prompt(choose_examples(pool, [], random.Random(0), n_shot=3)))
    print("rouge_l:", rouge_l(words("How do I reverse a list in Python?"), words("How can I reverse a Python list?")))
