"""LLM-as-a-Judge: the judge prompt, the score parser, and preference pairs (AIFT).

The model judges a (question, answer) pair with an additive 5-point rubric (Yuan et al. 2024,
section 2): it writes a short justification and ends with a line `Score: <points>`. Each
candidate answer is judged K times (paper: 3) with sampling; the parsed scores are averaged;
per prompt, the best-scored candidate becomes "chosen" and the worst "rejected".

    from srlm.judge import judge_prompt, parse_score
    text = judge_prompt("What is 2+2?", "4.")          # the prompt the judge model reads
    parse_score("...reasoning...\\n**Score:** 4/5")      # -> 4.0
    parse_score("Score: 7")                             # -> None (outside 0..5)

The CLI that runs a model over candidates.jsonl is the top-level judge.py; tests live in
tests/test_judge.py (`python -m pytest -q tests/test_judge.py`).
"""
from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Callable, Sequence

from srlm.io import DataError, read_text

MAX_SCORE = 5.0

# The paper's additive rubric, in our own words. Slots: {prompt} and {response}; every other
# brace in a template is literal text (we do not use str.format, see `judge_prompt`).
DEFAULT_TEMPLATE = """\
Your task is to grade an answer to a user's question. Use the additive scale below: start at \
0 points and add one point for every criterion the answer satisfies, up to 5 in total.

- Add 1 point if the answer stays on the subject of the question and gives at least some \
related information, even when it is partial or includes material that does not belong.
- Add a 2nd point if the answer handles a substantial part of what was asked, although it \
does not settle the question completely or answer it head-on.
- Add a 3rd point if the answer covers the essential parts of the question in a useful way, \
even if it reads like a web page or a forum post rather than an assistant's reply.
- Add a 4th point if the answer is plainly written by an assistant speaking to the user, \
answers the question directly and thoroughly, and is well structured and helpful; small \
improvements in clarity, length or focus may still be possible.
- Add a 5th point if the answer fits the question perfectly, contains nothing unnecessary, and \
reads as the work of a knowledgeable expert who offers real insight.

<question>
{prompt}
</question>

<answer>
{response}
</answer>

Now explain your grading in no more than 100 words. Then finish with one last line of exactly \
this form: "Score: <total points>", where <total points> is a whole number from 0 to 5.
"""

# Same rubric, far fewer tokens: for small models with short contexts (the built-in tiny world).
COMPACT_TEMPLATE = """\
Grade the answer from 0 to 5. Add one point for each: on topic; covers much of the question; \
answers its core usefully; a direct, complete, well organised assistant reply; expert and \
insightful with nothing extra.
Question: {prompt}
Answer: {response}
Give one short reason, then a last line "Score: N".
"""

TEMPLATES = {"default": DEFAULT_TEMPLATE, "compact": COMPACT_TEMPLATE}
_SLOT = re.compile(r"\{(prompt|response)\}")


# ----------------------------------------------------------------------------- the judge prompt

def check_template(template: str, source: str = "template") -> str:
    """Return `template` if it has both {prompt} and {response} slots, else raise DataError."""
    if not isinstance(template, str):
        raise DataError(f"{source}: a judge template must be a string")
    found = set(_SLOT.findall(template))
    missing = sorted({"prompt", "response"} - found)
    if missing:
        raise DataError(f"{source}: judge template lacks the slot(s) "
                        + ", ".join("{" + m + "}" for m in missing))
    return template


def load_template(name_or_path: str | None) -> str:
    """'default' / 'compact' / None -> a built-in template; anything else is read as a file."""
    if name_or_path is None:
        return DEFAULT_TEMPLATE
    if name_or_path in TEMPLATES:
        return TEMPLATES[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise DataError(f"{path}: judge template file not found "
                        f"(or use one of the built-ins: {', '.join(TEMPLATES)})")
    return check_template(read_text(path), source=str(path))


def reply_view(response: str, after: str = "") -> str:
    """What the judge is shown of a reply: all of it, or with `after` given and present, only its
    final answer, the text after the last `after` without a closing full stop.

    A reply that works its answer out in steps ("Ones 8 + 5 = 13, carry 1; ... That gives 153.")
    would otherwise hand the judge those steps to copy, and a small judge copies them, wrong ones
    included, instead of working the question out itself (the worked world: README, "What was tried").

    >>> reply_view("Ones 8 + 5 = 12, carry 1; tens 7 + 8 + 1 = 15. That gives 152.", "That gives ")
    '152'
    """
    if not after or after not in response:
        return response
    final = response.rsplit(after, 1)[1].strip()
    return final[:-1].rstrip() if final.endswith(".") else final


def judge_prompt(prompt: str, response: str, template: str | None = None, reply_after: str = "") -> str:
    """Fill the judge template with the question and the answer to be graded (`reply_view`: with
    `reply_after`, only the reply's final answer).

    The two slots are filled in a single pass, so a question that itself contains the text
    "{response}" (or any braces) is copied verbatim and never substituted a second time.
    """
    template = DEFAULT_TEMPLATE if template is None else check_template(template)
    values = {"prompt": prompt.strip(), "response": reply_view(response, reply_after).strip()}
    return _SLOT.sub(lambda m: values[m.group(1)], template)


# ----------------------------------------------------------------------------- the score parser
# A score line is a line whose label is "Score" (optionally "Final/Total/Overall score"), maybe
# wrapped in markdown (`**Score:** 4`, `## Score: 4`, `- Score = 4`), followed by ':' or '='.
# The value after it must be a plain number, optionally "/5", "out of 5" or "points", optionally
# wrapped in markdown or followed by punctuation. ASCII-only matching: no Unicode digits or
# look-alike letters sneak in. The LAST score line in the text decides; if its value is not a
# valid number in [0, 5], the result is None (we never fall back to an earlier line).
_LABEL = re.compile(r"^[\s>*_#`~|-]*(?:(?:final|total|overall)\s+)?score[\s*_`]*[:=]",
                    re.IGNORECASE | re.ASCII)
_VALUE = re.compile(
    r"(?P<num>[0-9]+(?:\.[0-9]+)?)"
    r"(?:\s*/\s*(?P<den>[0-9]+(?:\.[0-9]+)?)|\s+out\s+of\s+(?P<den2>[0-9]+(?:\.[0-9]+)?)|\s*points?)?",
    re.IGNORECASE | re.ASCII)
_VALUE_LEFT, _VALUE_RIGHT = " \t*_`([", " \t*_`.!,;:)]"  # markdown / punctuation around the value


@functools.lru_cache(maxsize=32)
def compile_score_pattern(pattern: str) -> re.Pattern:
    """Compile a user score pattern: it must have a group named 'score' or at least one group."""
    try:
        rx = re.compile(pattern, re.MULTILINE)
    except re.error as e:
        raise ValueError(f"invalid score pattern {pattern!r}: {e}") from None
    if "score" not in rx.groupindex and rx.groups == 0:
        raise ValueError(f"score pattern {pattern!r} needs a capture group (ideally (?P<score>...))")
    return rx


def _in_range(value: float) -> float | None:
    return value if 0.0 <= value <= MAX_SCORE else None


def parse_score(text, pattern: str | None = None) -> float | None:
    """Read the judge's final score: a float in [0, 5], or None. Never raises on any text.

    Default rules (see the regexes above): the last `Score: ...` line wins; "4", "4.0",
    "4/5", "4 out of 5", "4 points", markdown bold and trailing punctuation are accepted;
    out-of-range values (6, 10, "8/10"), negatives, words ("four") and texts without a score
    line give None. With `pattern`, the last match of that regex (group 'score', else group 1)
    is converted to float and range-checked the same way.
    """
    if not isinstance(text, str):
        return None
    if pattern is not None:
        rx = compile_score_pattern(pattern)
        last = None
        for last in rx.finditer(text):
            pass
        if last is None:
            return None
        raw = last.group("score") if "score" in rx.groupindex else last.group(1)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            return None
        return _in_range(value) if math.isfinite(value) else None

    value_text = None
    for line in text.splitlines():
        label = _LABEL.match(line)
        if label:
            value_text = line[label.end():]
    if value_text is None:
        return None
    m = _VALUE.fullmatch(value_text.strip().rstrip(_VALUE_RIGHT).lstrip(_VALUE_LEFT))
    if not m:
        return None
    den = m.group("den") or m.group("den2")
    if den is not None and float(den) != MAX_SCORE:
        return None  # "8/10" is a different scale: refuse rather than guess
    return _in_range(float(m.group("num")))


def format_score(score: float) -> str:
    """4.0 -> "4", 3.5 -> "3.5"."""
    return f"{score:g}"


def truncate_after_score(text: str, score: float, pattern: str | None = None) -> str:
    """A judgement that ends with its score: whatever follows the last score line is dropped.

    Default pattern: the last score line is rewritten in the canonical form "Score: <s>" (so
    "**Score:** 4/5" becomes "Score: 4"); with a custom pattern the text is cut after its last
    match. Used to build clean EFT training targets.
    """
    if pattern is not None:
        last = None
        for last in compile_score_pattern(pattern).finditer(text):
            pass
        return text[:last.end()] if last is not None else f"{text.rstrip()}\nScore: {format_score(score)}"
    lines = text.splitlines()
    cut = max((i for i, line in enumerate(lines) if _LABEL.match(line)), default=len(lines))
    head = "\n".join(lines[:cut]).rstrip()
    return (head + "\n" if head else "") + f"Score: {format_score(score)}"


# ----------------------------------------------------------------------------- scores -> pairs

def aggregate_scores(scores_per_judgement: Sequence[float | None], min_valid: int = 1) -> float | None:
    """Mean of the parsed scores of one candidate; None when fewer than `min_valid` parsed."""
    if min_valid < 1:
        raise ValueError(f"min_valid must be >= 1, got {min_valid}")
    valid = [s for s in scores_per_judgement if s is not None]
    if len(valid) < min_valid:
        return None
    return sum(valid) / len(valid)


def is_score(value) -> bool:
    """A score a judgement can have: a real number in [0, 5] (not a bool, not NaN or inf)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and 0.0 <= value <= MAX_SCORE)


def build_pair(prompt: str, candidates: Sequence[str], scores: Sequence[float | None],
               id: str | None = None, min_margin: float = 0.0) -> dict | None:
    """One AIFT preference pair from scored candidates, or None when there is no preference.

    - candidates whose score is None (too few valid judgements) are left out, and so are scores
      that are not a number in [0, 5] (NaN, inf, 9: never parsed, so they cannot rank anything);
    - identical texts (after stripping whitespace) are one answer: their scores are averaged,
      so chosen and rejected can never be the same text;
    - chosen = highest score, rejected = lowest; among equal scores the earliest candidate;
    - best score == worst score (a tie, or fewer than two distinct answers) -> None, and so is a
      gap below `min_margin` (e.g. 1.5 keeps "right over wrong", 5 or 4 against 2, and drops "bare
      over sentence", 5 against 4: the pairs then train correctness, not style).
    """
    if len(candidates) != len(scores):
        raise ValueError(f"{len(candidates)} candidates but {len(scores)} scores")
    by_text: dict[str, list[float]] = {}
    first_text: dict[str, str] = {}
    for text, score in zip(candidates, scores):
        if not is_score(score):
            continue
        key = text.strip()
        by_text.setdefault(key, []).append(score)
        first_text.setdefault(key, text)
    if len(by_text) < 2:
        return None
    merged = [(key, sum(v) / len(v)) for key, v in by_text.items()]  # insertion order = input order
    best = max(merged, key=lambda kv: kv[1])      # max/min return the first of equal elements
    worst = min(merged, key=lambda kv: kv[1])
    if best[1] == worst[1] or best[1] - worst[1] < min_margin:
        return None
    pair = {"prompt": prompt, "chosen": first_text[best[0]], "rejected": first_text[worst[0]],
            "chosen_score": best[1], "rejected_score": worst[1]}
    return {"id": id, **pair} if id is not None else pair


def score_histogram(scores: Sequence[float | None]) -> dict[str, int]:
    """Counts of parsed scores rounded to the nearest whole point (half up), keys "0".."5"."""
    hist = {str(k): 0 for k in range(int(MAX_SCORE) + 1)}
    for s in scores:
        if s is not None:
            hist[str(int(math.floor(s + 0.5)))] += 1
    return hist


def check_judgement_row(row, where: str) -> None:
    """Raise DataError unless `row` is {"id", "candidate_index": int >= 0, "scores": [score | None]}."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in ("id", "candidate_index", "scores"):
        if key not in row:
            raise DataError(f"{where}: missing key {key!r}")
    where = f"{where} (id {row['id']!r})"
    idx = row["candidate_index"]
    if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
        raise DataError(f"{where}: key 'candidate_index' must be a whole number >= 0, got {idx!r}")
    if not isinstance(row["scores"], list):
        raise DataError(f"{where}: key 'scores' must be a list of scores, got {row['scores']!r}")
    for s in row["scores"]:
        if s is not None and not is_score(s):
            raise DataError(f"{where}: key 'scores' holds {s!r}, which is neither null nor a score in "
                            f"[0, {format_score(MAX_SCORE)}]")


def pairs_from_judgements(candidate_rows: Sequence[dict], judgement_rows: Sequence[dict],
                          min_valid: int = 1, source: str = "judgements",
                          min_margin: float = 0.0) -> tuple[list[dict], dict]:
    """Join candidates.jsonl rows with judgements.jsonl rows -> (pairs, summary).

    candidate_rows: {"id", "prompt", "candidates": [str, ...]}
    judgement_rows: {"id", "candidate_index", "scores": [float | None, ...], ...}
    Mean scores are recomputed from "scores" with `min_valid`, so pairs can be rebuilt with a
    different rule without judging again. A candidate with no judgement row counts as unjudged.
    The summary holds the parse-failure rate, pair counts and a histogram of parsed scores.
    A judgement row that no judge run could have written (no "scores", a score of 9 or NaN, a
    candidate_index that is not a whole number) is a DataError naming `source`, the record and
    the key: such a file was edited or comes from elsewhere, and guessing would build wrong pairs.
    """
    scores_of: dict[tuple[str, int], list] = {}
    for n, row in enumerate(judgement_rows, start=1):
        check_judgement_row(row, f"{source}: record {n}")
        scores_of[(str(row["id"]), row["candidate_index"])] = list(row["scores"])
    pairs: list[dict] = []
    all_scores: list[float | None] = []
    n_candidates = dropped = ties = unjudged = 0
    for row in candidate_rows:
        rid = str(row["id"])
        means = []
        for i in range(len(row["candidates"])):
            n_candidates += 1
            judged = scores_of.get((rid, i))
            if judged is None:
                unjudged += 1
                means.append(None)
                continue
            all_scores.extend(judged)
            mean = aggregate_scores(judged, min_valid)
            dropped += mean is None
            means.append(mean)
        pair = build_pair(row["prompt"], row["candidates"], means, id=rid, min_margin=min_margin)
        if pair is None:
            ties += 1
        else:
            pairs.append(pair)
    failures = sum(s is None for s in all_scores)
    summary = {
        "prompts": len(candidate_rows),
        "candidates": n_candidates,
        "unjudged_candidates": unjudged,
        "judgements": len(all_scores),
        "parse_failures": failures,
        "parse_failure_rate": failures / len(all_scores) if all_scores else 0.0,
        "candidates_dropped_min_valid": dropped,
        "min_valid": min_valid,
        "min_margin": min_margin,
        "pairs": len(pairs),
        "prompts_without_pair": ties,
        "score_histogram": score_histogram(all_scores),
    }
    return pairs, summary


# ----------------------------------------------------------------------------- a model as judge

JudgeFn = Callable[[list[str]], list[str]]


def make_model_judge(model, tokenizer, *, max_new_tokens: int = 256, temperature: float = 0.7,
                     top_p: float = 0.9, seed: int = 0, batch_size: int | None = None) -> JudgeFn:
    """Wrap a Llama + Tokenizer as `judge_fn(judge_prompts) -> judgement texts`.

    Each text is sent as one chat turn (tokenizer.encode_prompt) and sampled with
    srlm.sampling.generate. A prompt that fills the model's whole context is not truncated (that
    would change what is judged): its judgement is "", which parses as no score. A prompt that
    leaves less than max_new_tokens of room gets a shorter judgement (generate stops at the
    context end); if that cuts off the score line, it too counts as a parse failure.
    `judge_fn(prompts, seed=s)` samples with seed s (default: `seed`), so a caller that numbers
    its batches gets the same texts when it reruns one.
    """
    from srlm.sampling import generate  # imported here: the parser needs no torch

    max_len = getattr(getattr(model, "args", None), "max_seq_len", None)

    def judge_fn(judge_prompts: list[str], seed: int = seed) -> list[str]:
        encoded = [tokenizer.encode_prompt(p) for p in judge_prompts]
        fits = [max_len is None or len(ids) < max_len for ids in encoded]
        todo = [ids for ids, ok in zip(encoded, fits) if ok]
        outs = iter(generate(model, todo, max_new_tokens, temperature=temperature, top_p=top_p,
                             eos_id=tokenizer.eos_id, seed=seed,
                             batch_size=batch_size) if todo else [])
        return [tokenizer.decode(next(outs)) if ok else "" for ok in fits]

    return judge_fn
