"""The built-in world: small instruction tasks whose answers code can check, and their grader.

Self-rewarding makes two claims (the model follows instructions better, and judges better, each
iteration). To measure both on a 2-core CPU without an outside judge we need tasks where a short
program knows the right answer. This module is that world:

- task families (arithmetic, word and list tasks), each a few prompt templates plus a solver;
- `sample_task(rng)` draws a task from a seeded `random.Random` (same seed -> same tasks);
- `parse_task(prompt)` maps any prompt text back to its task when it matches a template, so
  prompts the model writes for itself during self-instruction can be graded too;
- `grade(task, response)` scores a response 0-5 with an additive rubric shaped like the judge
  prompt's (below); `is_exact` is exact-answer accuracy;
- `responses_of_each_quality(task, rng)` writes one response per score 0..5, used for the EFT
  seed data, the held-out ranked groups and the base-model corpus (data/build.py);
- `working(task)` is the judge's worked solution (one digit fact, comparison or count per step)
  and `judgement_text(task, reply, score)` the whole judgement the EFT data teaches: the worked
  solution, the reply's answer beside it, the verdict, the rubric's reason, `Score: s`.

The rubric (one point per criterion; a criterion counts only when every one before it holds,
so the score is the number of leading criteria met):

  1. on topic:      the response is not empty and mentions the task: a word or number from the
                    question, a word of the family's vocabulary ("sum", "reverse", "largest"...),
                    or a candidate answer (point 2's test).
  2. right kind:    it offers an answer of the right kind that is not a mere echo of the
                    question: an integer for counting/arithmetic/max/min, a bracketed list of
                    integers for sorting, an all-capitals word for uppercasing, a rearrangement
                    of the word's letters (other than the word itself) for reversing.
  3. correct:       the correct answer is among the offered answers.
  4. direct:        stated cleanly as an assistant would: the last offered answer is the correct
                    one, no other (non-echo) answer competes with it, no hedging ("maybe",
                    "I think"...), and it fits on one line of at most 12 words.
  5. exact:         nothing extraneous: the response, stripped of surrounding whitespace, is
                    exactly the canonical answer ("68", "[1, 2, 5, 9]", "elppa", "RIVER").

A worked reply (steps, then "That gives X.", the form of `working`; the worked world of
data/ift_worked.jsonl, an experiment) is graded on its conclusion, the text after its last "That
gives ": the steps' numbers are not offered answers, hedging anywhere costs point 4, and point 5
means the reply is the worked solution itself.

Offered answers ("candidates") are read from the response by the family's kind: integers
outside square brackets (numbers inside a bracketed list are list items, not answers), bracketed
integer lists, capitalised words, or anagrams of the word. An "echo" is a candidate that already
appears in the question (its numbers, its list). Known simplification: for max/min the answer is
itself a number of the question, so a reply that just repeats the numbers unbracketed gets 3.

    python -m srlm.world            # prints a few tasks with one response of each quality
    python -m pytest -q tests/test_world.py
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

# ----------------------------------------------------------------------------- vocabulary
# Common lowercase words of 4-8 letters, no palindromes, at least 3 distinct letters each
# (so a wrong rearrangement of the letters always exists for the reverse family).
WORDS = tuple("""
apple river garden window bread candle pencil orange silver planet forest yellow market
rabbit summer winter spring autumn castle bridge mirror pocket jacket basket button
cookie dragon engine farmer finger flower friend guitar hammer island kitten ladder
lemon monkey needle number paper parrot pepper pillow pirate puzzle rocket saddle school
shadow sister spider stone street sugar table ticket tiger tomato tunnel turtle velvet
wagon water wizard zebra anchor beach camel cloud dance eagle fabric ghost honey horse
juice knife light magic night ocean piano queen radio salad snake sound storm sweet
train truck uncle voice whale world yacht actor badge cabin daisy fence grape heart
jewel koala lunch maple noble olive pearl quiet robin sheep thumb urban vivid wheat
brick chair dream field glove house image jelly kettle lamp melon nurse otter plant
quilt round smile torch unity video witch young crown frost blank
""".split())

LETTERS = "abcdefghijklmnopqrstuvwxyz"
HEDGES = ("maybe", "perhaps", "probably", "think", "guess", "unsure", "possibly")
MAX_DIRECT_WORDS = 12


@dataclass(frozen=True)
class Task:
    """One task: its family, the prompt text, the exact answer, and the arguments it was made of.

    args per family: (a, b) for add/sub/mul; (word,) for reverse/upper/length; (letter, word)
    for count_letter; (items,) with items a tuple of ints for count_items/sort/max/min.
    """
    family: str
    prompt: str
    answer: str
    args: tuple

    @property
    def key(self) -> tuple:
        """Identity of the question regardless of wording: used to keep held-out sets disjoint."""
        return (self.family, self.args)


@dataclass(frozen=True)
class Family:
    name: str
    kind: str                      # "int", "list", "upper", "anagram": what an answer looks like
    templates: tuple[str, ...]     # prompt wordings; slots {a} {b} {w} {c} {xs}
    keywords: tuple[str, ...]      # words that show a response is about this kind of task
    sample_args: Callable[[random.Random], tuple]
    solve: Callable[[tuple], str]
    valid: Callable[[tuple], bool]  # which parsed arguments this family accepts


def format_list(items) -> str:
    """Canonical list text: "[1, 2, 5, 9]"."""
    return "[" + ", ".join(str(x) for x in items) + "]"


def _distinct_ints(rng: random.Random, n_lo: int, n_hi: int, lo: int = 1, hi: int = 50) -> tuple:
    return tuple(rng.sample(range(lo, hi + 1), rng.randint(n_lo, n_hi)))


def _word(rng: random.Random) -> str:
    return rng.choice(WORDS)


def _sub_args(rng: random.Random) -> tuple:
    while True:  # a - b == b would make the answer an echo of the question; skip those
        a = rng.randint(10, 99)
        b = rng.randint(1, a - 1)
        if a != 2 * b:
            return (a, b)


def _count_letter_args(rng: random.Random) -> tuple:
    w = _word(rng)
    if rng.random() < 0.8:
        return (rng.choice(w), w)
    return (rng.choice([c for c in LETTERS if c not in w]), w)


def _word_ok(w: str) -> bool:
    return 2 <= len(w) <= 12 and w.isalpha() and w.islower()


def _reverse_ok(args) -> bool:
    (w,) = args
    return _word_ok(w) and w != w[::-1] and len(set(w)) >= 2


def _list_ok(args, min_len: int = 1) -> bool:
    (items,) = args
    return min_len <= len(items) <= 12 and all(0 <= x <= 9999 for x in items)


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("add", "int", ("What is {a} + {b}?", "Add {a} and {b}."),
           ("add", "adding", "addition", "sum", "plus", "total"),
           lambda r: (r.randint(2, 99), r.randint(2, 99)),
           lambda a: str(a[0] + a[1]),
           lambda a: all(0 <= x <= 9999 for x in a)),
    Family("sub", "int", ("What is {a} - {b}?", "Subtract {b} from {a}."),
           ("subtract", "subtracting", "subtraction", "minus", "difference", "take"),
           _sub_args,
           lambda a: str(a[0] - a[1]),
           lambda a: all(0 <= x <= 9999 for x in a)),
    Family("mul", "int", ("What is {a} * {b}?", "Multiply {a} by {b}."),
           ("multiply", "multiplying", "multiplication", "times", "product"),
           lambda r: (r.randint(2, 12), r.randint(2, 12)),
           lambda a: str(a[0] * a[1]),
           lambda a: all(0 <= x <= 999 for x in a)),
    Family("reverse", "anagram", ('Reverse the word "{w}".', 'Write the word "{w}" backwards.'),
           ("reverse", "reversed", "reversing", "backwards", "backward"),
           lambda r: (_word(r),),
           lambda a: a[0][::-1],
           _reverse_ok),
    Family("upper", "upper", ('Write the word "{w}" in uppercase.', 'Convert "{w}" to capital letters.'),
           ("uppercase", "upper", "capital", "capitals", "caps"),
           lambda r: (_word(r),),
           lambda a: a[0].upper(),
           lambda a: _word_ok(a[0])),
    Family("count_letter", "int", ('How many times does the letter "{c}" appear in "{w}"?',),
           ("letter", "appears", "appear", "occurrences", "count", "times"),
           _count_letter_args,
           lambda a: str(a[1].count(a[0])),
           lambda a: len(a[0]) == 1 and a[0] in LETTERS and _word_ok(a[1])),
    Family("length", "int", ('How many letters are in the word "{w}"?',),
           ("letters", "length", "long", "count"),
           lambda r: (_word(r),),
           lambda a: str(len(a[0])),
           lambda a: _word_ok(a[0])),
    Family("count_items", "int", ("How many numbers are in the list {xs}?",),
           ("numbers", "items", "elements", "count", "list"),
           lambda r: (_distinct_ints(r, 3, 8),),
           lambda a: str(len(a[0])),
           _list_ok),
    Family("sort", "list", ("Sort the list {xs} in ascending order.", "Sort {xs} from smallest to largest."),
           ("sort", "sorted", "sorting", "ascending", "order"),
           lambda r: (_distinct_ints(r, 3, 5),),
           lambda a: format_list(sorted(a[0])),
           lambda a: _list_ok(a, min_len=2)),
    Family("max", "int", ("What is the largest number in {xs}?",),
           ("largest", "biggest", "maximum", "max", "greatest"),
           lambda r: (_distinct_ints(r, 3, 6),),
           lambda a: str(max(a[0])),
           _list_ok),
    Family("min", "int", ("What is the smallest number in {xs}?",),
           ("smallest", "minimum", "min", "least", "lowest"),
           lambda r: (_distinct_ints(r, 3, 6),),
           lambda a: str(min(a[0])),
           _list_ok),
]}
FAMILY_NAMES = tuple(FAMILIES)

# ----------------------------------------------------------------------------- making tasks


def _fill(template: str, family: str, args: tuple) -> str:
    if family in ("add", "sub", "mul"):
        return template.format(a=args[0], b=args[1])
    if family == "count_letter":
        return template.format(c=args[0], w=args[1])
    if family in ("reverse", "upper", "length"):
        return template.format(w=args[0])
    return template.format(xs=format_list(args[0]))


def make_task(family: str, args: tuple, template_index: int = 0) -> Task:
    """The task of `family` with these arguments, worded with template number `template_index`."""
    fam = FAMILIES[family]
    if not fam.valid(args):
        raise ValueError(f"invalid arguments {args!r} for task family {family!r}")
    return Task(family, _fill(fam.templates[template_index], family, args), fam.solve(args), args)


def sample_task(rng: random.Random, family: str | None = None) -> Task:
    """Draw one task (uniform family unless given, uniform template) from `rng`."""
    family = rng.choice(FAMILY_NAMES) if family is None else family
    fam = FAMILIES[family]
    args = fam.sample_args(rng)
    return make_task(family, args, rng.randrange(len(fam.templates)))


# ----------------------------------------------------------------------------- prompt -> task
_SLOT_RE = {"a": r"(\d{1,4})", "b": r"(\d{1,4})", "w": r"([a-z]+)", "c": r"([a-z])",
            "xs": r"(\[\d{1,4}(?:, \d{1,4})*\])"}


def _template_regex(template: str) -> tuple[re.Pattern, list[str]]:
    parts = re.split(r"\{(\w+)\}", template)   # literal, slot, literal, slot, ...
    pattern, slots = "", []
    for i, part in enumerate(parts):
        if i % 2:
            pattern += _SLOT_RE[part]
            slots.append(part)
        else:
            pattern += re.escape(part)
    return re.compile(pattern), slots


_PARSERS = [(name, i, *_template_regex(t))
            for name, fam in FAMILIES.items() for i, t in enumerate(fam.templates)]


def parse_task(prompt: str) -> Task | None:
    """The task whose template matches `prompt` exactly (after collapsing whitespace), or None.

    Arguments outside what a family accepts (a palindrome to reverse, numbers above 9999...)
    also give None, so every task returned has a well-defined answer.
    """
    if not isinstance(prompt, str):
        return None
    text = " ".join(prompt.split())
    for family, index, rx, slots in _PARSERS:
        m = rx.fullmatch(text)
        if not m:
            continue
        values = dict(zip(slots, m.groups()))
        if family in ("add", "sub", "mul"):
            args = (int(values["a"]), int(values["b"]))
        elif family == "count_letter":
            args = (values["c"], values["w"])
        elif family in ("reverse", "upper", "length"):
            args = (values["w"],)
        else:
            args = (tuple(int(x) for x in values["xs"][1:-1].split(", ")),)
        if not FAMILIES[family].valid(args):
            return None
        return Task(family, text, FAMILIES[family].solve(args), args)
    return None


# ----------------------------------------------------------------------------- the grader
_INT_RE = re.compile(r"(?<![\w-])(?<!\d\.)-?\d+(?!\w)(?!\.\d)")
_LIST_RE = re.compile(r"\[([^\[\]]*)\]")
_WORD_RE = re.compile(r"[A-Za-z]+")
_TOKEN_RE = re.compile(r"[a-z]+|\d+")


def _parse_list(body: str) -> str | None:
    if not body.strip():
        return "[]"
    items = [x.strip() for x in body.split(",")]
    if not all(re.fullmatch(r"-?\d+", x) for x in items):
        return None
    return format_list(int(x) for x in items)


def candidates(task: Task, text: str) -> list[str]:
    """The answers `text` offers, in order of appearance, normalised for comparison."""
    kind = FAMILIES[task.family].kind
    if kind == "int":
        outside = _LIST_RE.sub(" ", text)  # numbers inside [...] are list items, not answers
        return [str(int(x)) for x in _INT_RE.findall(outside)]
    if kind == "list":
        return [c for c in (_parse_list(b) for b in _LIST_RE.findall(text)) if c is not None]
    words = _WORD_RE.findall(text)
    if kind == "upper":
        return [w for w in words if len(w) >= 2 and w.isupper()]
    (word,) = task.args  # kind == "anagram"
    return [w.lower() for w in words if w.lower() != word and sorted(w.lower()) == sorted(word)]


def _normalised_answer(task: Task) -> str:
    return task.answer.lower() if FAMILIES[task.family].kind == "anagram" else task.answer


def _echoes(task: Task) -> set[str]:
    kind = FAMILIES[task.family].kind
    if kind == "int":
        return {str(int(x)) for x in re.findall(r"\d+", task.prompt)}
    if kind == "list":
        return {format_list(task.args[0])}
    return set()


WORKED_END = "That gives "


def conclusion(response: str) -> str | None:
    """A worked reply's conclusion: the text after its last "That gives " (the worked solution's
    last step states the answer), or None when the reply is not worked.

    >>> conclusion("Counting: t (1), a (2), b (3). That gives 3.")
    '3.'
    """
    if not isinstance(response, str) or WORKED_END not in response:
        return None
    return response.rsplit(WORKED_END, 1)[1]


def criteria(task: Task, response: str) -> tuple[bool, bool, bool, bool, bool]:
    """The five rubric criteria, each tested on its own (see the module docstring). A worked reply
    (steps, then "That gives X.") is graded on its conclusion, so its steps' numbers are not
    offered answers, and it is exact when it is the worked solution `working(task)` itself."""
    text = response if isinstance(response, str) else ""
    worked = conclusion(text)
    if worked is None:
        return _plain_criteria(task, text)
    _, right_kind, correct, direct, _ = _plain_criteria(task, worked)
    hedged = any(h in _TOKEN_RE.findall(text.lower()) for h in HEDGES)
    return (_plain_criteria(task, text)[0], right_kind, correct, direct and not hedged, text.strip() == working(task))


def _plain_criteria(task: Task, text: str) -> tuple[bool, bool, bool, bool, bool]:
    cands = candidates(task, text)
    answer = _normalised_answer(task)
    echoes = _echoes(task)
    fresh = [c for c in cands if c not in echoes]        # offered answers that are not echoes
    tokens = set(_TOKEN_RE.findall(text.lower()))
    terms = set(_TOKEN_RE.findall(" ".join(str(a) for a in task.args).lower()))
    terms = {t for t in terms if len(t) > 1 or t.isdigit()}  # a lone letter is not a topic
    on_topic = bool(text.strip()) and bool(cands or tokens & (terms | set(FAMILIES[task.family].keywords)))
    right_kind = bool(fresh) or answer in cands
    correct = answer in cands
    words = text.split()
    direct = (bool(cands) and cands[-1] == answer and all(c == answer for c in fresh)
              and not any(h in tokens for h in HEDGES) and "not sure" not in text.lower()
              and "\n" not in text.strip() and len(words) <= MAX_DIRECT_WORDS)
    exact = text.strip() == task.answer
    return (on_topic, right_kind, correct, direct, exact)


def grade(task: Task, response: str) -> int:
    """Score 0..5: the number of leading rubric criteria the response meets."""
    score = 0
    for met in criteria(task, response):
        if not met:
            break
        score += 1
    return score


def is_exact(task: Task, response: str) -> bool:
    """Exact-answer accuracy: the stripped response is the canonical answer, or the canonical
    worked solution (`working(task)`, for the worked world)."""
    return isinstance(response, str) and response.strip() in (task.answer, working(task))


def answer_correct(task: Task, response: str) -> bool:
    """The reply's answer is right, in any style: the last answer it offers is the correct one
    ("68", "The answer is 68.", "I think it is 68." and "Maybe 7, or 68." all count; "68 or 7" not)."""
    worked = conclusion(response)
    cands = candidates(task, worked if worked is not None else response if isinstance(response, str) else "")
    return bool(cands) and cands[-1] == _normalised_answer(task)


def grade_prompt(prompt: str, response: str) -> int | None:
    """Grade a response to a prompt given as text; None when the prompt matches no task."""
    task = parse_task(prompt)
    return None if task is None else grade(task, response)


REASONS = {
    0: "is off topic",
    1: "is on topic but gives no answer of the right kind",
    2: "gives an answer of the right kind, but a wrong one",
    3: "contains the correct answer, but not cleanly",
    4: "states the correct answer directly, with extra words",
    5: "is exactly the correct answer, nothing extra",
}

# ----------------------------------------------------------------------------- worked solutions
# The judge may think before it scores, the answer may not: the rubric asks for a bare answer, but
# the judge prompt asks for a reason first. So the judgement works the question out in small steps,
# each one local (one digit fact, one comparison of two numbers, one letter, one count), and only
# then looks at the reply. Checking is then easier than solving in one step, which is what lets a
# self-rewarding judge prefer right answers its own policy gives only sometimes.

_PLACES = ("ones", "tens", "hundreds", "thousands", "ten-thousands")


def _column_add(a: int, b: int) -> str:
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        total = x + y + carry
        terms = f"{x} + {y}" + (f" + {carry}" if carry else "")
        carry = total // 10
        steps.append(f"{_PLACES[i]} {terms} = {total}" + (", carry 1" if carry else ""))
    return "; ".join(steps)


def _column_sub(a: int, b: int) -> str:
    """a >= b: digit by digit from the ones, borrowing ten from the next place when needed."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, borrow = [], 0
    for i in range(len(da)):
        x, y = int(da[i]) - borrow, int(db[i]) if i < len(db) else 0
        borrow = int(x < y)
        steps.append(f"{_PLACES[i]} {x + 10 * borrow} - {y} = {x + 10 * borrow - y}"
                     + (", borrow 1" if borrow else ""))
    return "; ".join(steps)


def working(task: Task) -> str:
    """The judge's worked solution of `task`, from the question alone, ending "That gives X."

    >>> working(make_task("length", ("table",)))
    'Counting: t (1), a (2), b (3), l (4), e (5). That gives 5.'
    """
    f, args = task.family, task.args
    if f == "add":
        steps = _column_add(*args)
    elif f == "sub":
        a, b = args
        steps = _column_sub(a, b) if a >= b else f"{b} is larger, so the answer is negative: {_column_sub(b, a)}"
    elif f == "mul":
        a, b = args
        steps = (f"{a} times {b}: " + ", ".join(f"{b * k} ({k})" for k in range(1, a + 1))
                 if 1 <= a <= 12 else f"{a} times {b}")
    elif f == "reverse":
        w = args[0]
        steps = f"spelled {' '.join(w)}; from the end {' '.join(reversed(w))}"
    elif f == "upper":
        w = args[0]
        steps = f"spelled {' '.join(w)}; in capitals {' '.join(w.upper())}"
    elif f == "count_letter":
        c, w = args
        seen, parts = 0, []
        for ch in w:
            seen += ch == c
            parts.append(f"{ch} ({seen})" if ch == c else ch)
        steps = f'Counting "{c}": ' + ", ".join(parts)
    elif f == "length":
        steps = "Counting: " + ", ".join(f"{ch} ({k})" for k, ch in enumerate(args[0], start=1))
    elif f == "count_items":
        steps = "Counting: " + ", ".join(f"{x} ({k})" for k, x in enumerate(args[0], start=1))
    elif f in ("max", "min"):
        best, parts = None, []
        for x in args[0]:
            best = x if best is None else (max if f == "max" else min)(best, x)
            parts.append(f"{x} -> {best}")
        steps = ("Largest" if f == "max" else "Smallest") + " so far: " + ", ".join(parts)
    elif f == "sort":
        done, parts = [], []
        for x in args[0]:  # insertion sort: each step puts one more number in its place
            done = sorted(done + [x])
            parts.append(format_list(done))
        steps = "Inserting one at a time: " + ", ".join(parts)
    else:
        raise ValueError(f"no worked solution for family {f!r}")
    steps = steps[0].upper() + steps[1:]
    return f"{steps}. That gives {task.answer}."


def reply_answer(task: Task, response: str) -> str | None:
    """The answer a judge reads off a reply: the correct one if it is offered at all, else the last
    answer offered that is not an echo of the question, else None (no answer of the right kind)."""
    worked = conclusion(response)
    cands = candidates(task, worked if worked is not None else response if isinstance(response, str) else "")
    answer = _normalised_answer(task)
    if answer in cands:
        return answer
    fresh = [c for c in cands if c not in _echoes(task)]
    return fresh[-1] if fresh else None


def _units(task: Task, answer: str) -> tuple[str, list[str]]:
    """What a comparison walks through: the digits of a number, the letters of a word, the items
    of a list; and its name for them."""
    kind = FAMILIES[task.family].kind
    if kind == "int":
        return "digit", list(answer)
    if kind == "list":
        return "item", re.findall(r"-?\d+", answer)
    return "letter", list(answer)


def comparison(task: Task, said: str) -> str:
    """The check that ends a judgement: the reply's answer against the worked result, one unit
    (digit, letter or list item) at a time from the left, stopping at the first difference.

    Each step compares two units written side by side, so the verdict never rests on comparing two
    whole answers at a distance. With the previous one-step check ("The reply says 49: they
    match"), M1 said "match" for 45 of 77 wrong replies after a right worked result; a likely reason
    is that a wrong value often appears elsewhere in the worked solution, as "(3)" in a count.

    >>> comparison(make_task("add", (34, 19)), "49")
    'The reply says 49. Digit by digit against 53: 4 and 5 differ, so it is wrong.'
    """
    unit, ours = _units(task, task.answer)
    _, theirs = _units(task, said)
    steps, differ = [], False
    for i in range(max(len(ours), len(theirs))):
        a = theirs[i] if i < len(theirs) else "nothing"
        b = ours[i] if i < len(ours) else "nothing"
        if a.lower() != b.lower():
            steps.append(f"{a} and {b} differ")
            differ = True
            break
        steps.append(f"{a} and {b}")
    verdict = "so it is wrong" if differ else "all the same, so it is right"
    return f"The reply says {said}. {unit.capitalize()} by {unit} against {task.answer}: {', '.join(steps)}, {verdict}."


def justification(task: Task, response: str, score: int) -> str:
    """The judge's reason: the worked solution, the reply's answer checked against it, then the
    rubric's verdict."""
    said = reply_answer(task, response) if score >= 2 else None
    check = "The reply gives no answer to check." if said is None else comparison(task, said)
    return f"{working(task)}\n{check} It {REASONS[score]}."


def judgement_text(task: Task, response: str, score: int) -> str:
    """The full judge output the EFT data teaches: the reason (worked solution, check, verdict),
    then 'Score: s'."""
    return f"{justification(task, response, score)}\nScore: {score}"


# ----------------------------------------------------------------------------- graded responses
OFF_TOPIC = (
    "I enjoy walking in the park when the weather is nice.",
    "My favourite colour is green, like fresh grass.",
    "Cats like to sleep in warm and sunny places.",
    "Tea tastes better with a little honey in it.",
    "The museum opens early on weekends.",
    "Good morning! I hope you are having a pleasant day.",
    "Music can make a long journey feel shorter.",
    "We went to the beach and built a sand castle.",
    "",
)

ON_TOPIC_NO_ANSWER = {
    "add": ("To answer this, add the two numbers together.", "This is an addition question about a sum."),
    "sub": ("You subtract the second number from the first one.", "This asks for the difference of two numbers."),
    "mul": ("You multiply the two numbers to get the product.", "This is a multiplication question."),
    "reverse": ("To reverse a word, read its letters from the end to the start.",
                "You write the letters of the word backwards."),
    "upper": ("Write every letter of the word as a capital.", "Uppercase means using capital letters."),
    "count_letter": ("Count how often that letter appears in the word.", "Look at each letter and count it."),
    "length": ("Count the letters in the word one by one.", "The length of a word is how many letters it has."),
    "count_items": ("Count the numbers in the list one by one.", "The list given is {xs}."),
    "sort": ("Sort the numbers so that they are in ascending order.", "The list given is {xs}."),
    "max": ("Look for the largest number in the list.", "The list given is {xs}."),
    "min": ("Look for the smallest number in the list.", "The list given is {xs}."),
}

DIRECT = {  # one short line that ends with the answer; {ans} is the answer
    "add": ("The answer is {ans}.", "{a} + {b} = {ans}.", "{a} plus {b} is {ans}."),
    "sub": ("The answer is {ans}.", "{a} - {b} = {ans}.", "{a} minus {b} is {ans}."),
    "mul": ("The answer is {ans}.", "{a} * {b} = {ans}.", "{a} times {b} is {ans}."),
    "reverse": ('The word "{w}" reversed is "{ans}".', "Backwards, it reads {ans}."),
    "upper": ('In uppercase, "{w}" is "{ans}".', "In capitals it is {ans}."),
    "count_letter": ('The letter "{c}" appears {ans} {times} in "{w}".', "The answer is {ans}."),
    "length": ('The word "{w}" has {ans} letters.', "It has {ans} letters."),
    "count_items": ("The list has {ans} numbers.", "There are {ans} numbers."),
    "sort": ("The sorted list is {ans}.", "In ascending order: {ans}."),
    "max": ("The largest number is {ans}.", "The answer is {ans}."),
    "min": ("The smallest number is {ans}.", "The answer is {ans}."),
}

INDIRECT = (  # correct answer present, but not clean: hedged, competing, padded or multi-line
    "I think it might be {wrong}, or perhaps {ans}.",
    "Sure, let me work this out for you step by step.\n{direct}",
    "{direct} I hope this helps, and let me know if there is anything else you need!",
    "Hmm, {ans}? Or maybe {wrong}.",
)

WRONG = ("The answer is {wrong}.", "{wrong}", "I believe the answer is {wrong}.")


def wrong_answer(task: Task, rng: random.Random) -> str:
    """A wrong answer of the right kind that is not an echo of the question."""
    kind = FAMILIES[task.family].kind
    echoes = _echoes(task)
    for _ in range(100):
        if kind == "int":
            value = int(task.answer) + rng.choice([-10, -2, -1, 1, 1, 2, 3, 10])
            cand = str(value)
            if value < 0:
                continue
        elif kind == "list":
            items = list(task.args[0])
            rng.shuffle(items)
            cand = format_list(items)
        elif kind == "upper":
            w = list(task.answer)
            i = rng.randrange(len(w))
            w[i] = rng.choice([c for c in LETTERS.upper() if c != w[i]])
            cand = "".join(w)
        else:
            letters = list(task.args[0])
            rng.shuffle(letters)
            cand = "".join(letters)
        if cand != task.answer and cand not in echoes and cand != task.args[0]:
            return cand
    raise ValueError(f"could not make a wrong answer for {task}")


def near_miss(task: Task, rng: random.Random) -> str:
    """A wrong answer one slip away from the right one, as a small model's own mistakes are: a
    number off by one, a digit dropped or two digits swapped; a sorted list with two neighbours
    swapped, one item changed, repeated or dropped; one letter changed or two swapped.

    The judge's seed data needs these: on its own samples M1 called 60% of wrong replies right
    (sort: 194 of 204), because wrong_answer's shuffled lists and far numbers differ at a glance.
    Falls back to wrong_answer when no slip gives a valid wrong answer.
    """
    kind = FAMILIES[task.family].kind
    ans = task.answer
    echoes = _echoes(task) | ({task.args[0]} if kind == "anagram" else set())  # "cat" itself is no slip of "tac"
    slips: list[str] = []
    if kind == "int":
        slips += [str(int(ans) + d) for d in (-1, 1)]
        if len(ans) > 1:
            slips += [ans[:-1], ans[0]]
            if ans[-1] != ans[-2]:
                slips.append(ans[:-2] + ans[-1] + ans[-2])
        slips = [s for s in slips if not s.startswith("-") and not (len(s) > 1 and s[0] == "0")]
    elif kind == "list":
        items = sorted(task.args[0])                     # the right answer's items, in order
        for i in range(len(items) - 1):
            slips.append(format_list(items[:i] + [items[i + 1], items[i]] + items[i + 2:]))
        for i in range(len(items)):
            for d in (-10, -1, 1, 10):
                if items[i] + d >= 0:
                    slips.append(format_list(items[:i] + [items[i] + d] + items[i + 1:]))
            j = i - 1 if i else i + 1
            slips.append(format_list(items[:i] + [items[j]] + items[i + 1:]))
            if len(items) > 2:
                slips.append(format_list(items[:i] + items[i + 1:]))
    else:
        letters = list(ans)
        for i in range(len(letters) - 1):
            slips.append("".join(letters[:i] + [letters[i + 1], letters[i]] + letters[i + 2:]))
        if kind == "upper":
            for i in range(len(letters)):
                c = rng.choice([c for c in LETTERS.upper() if c != letters[i]])
                slips.append("".join(letters[:i] + [c] + letters[i + 1:]))
    slips = sorted({s for s in slips if s != ans and s not in echoes})  # sorted: no set order decides
    return rng.choice(slips) if slips else wrong_answer(task, rng)


def slipped_working(task: Task, rng: random.Random) -> str:
    """A worked reply with one slip, as a small model's own wrong working is: the worked solution
    of the question misread in one place (a digit of a number one off, a letter of the word
    dropped, doubled or two swapped, a list item changed, dropped or doubled), so every step after
    the slip follows from it and the conclusion is wrong (grade 2 where a slip allows). The worked world's judge data pairs
    these with the right working, so the judge learns to work the question out itself instead of
    trusting the reply's steps.

    >>> slipped_working(make_task("length", ("table",)), random.Random(0)) != working(make_task("length", ("table",)))
    True
    """
    f, args = task.family, task.args
    for attempt in range(200):
        if f in ("add", "sub", "mul"):
            i = rng.randrange(2)
            digits = list(str(args[i]))
            j = rng.randrange(len(digits))
            digits[j] = str((int(digits[j]) + rng.choice((-1, 1))) % 10)
            if len(digits) > 1 and digits[0] == "0":
                continue
            new = list(args)
            new[i] = int("".join(digits))
            slipped = tuple(new)
        elif f == "count_letter":  # one letter misread: as the counted letter, or it as another
            c, w = args[0], list(args[1])
            j = rng.randrange(len(w))
            w[j] = rng.choice([x for x in LETTERS if x != c]) if w[j] == c else c
            slipped = (c, "".join(w))
        elif f in ("reverse", "upper", "length"):  # a reversed word must stay an anagram: swap only
            w = list(args[0])
            j, how = rng.randrange(len(w)), "swap" if f == "reverse" else rng.choice(("drop", "double", "swap"))
            if how == "drop":
                del w[j]
            elif how == "double":
                w.insert(j, w[j])
            elif j + 1 < len(w):
                w[j], w[j + 1] = w[j + 1], w[j]
            slipped = ("".join(w),)
        else:
            xs = list(args[0])
            j, how = rng.randrange(len(xs)), rng.choice(("change", "drop", "double"))
            if how == "change":
                xs[j] = max(0, xs[j] + rng.choice((-10, -1, 1, 10)))
            elif how == "drop" and len(xs) > 1:
                del xs[j]
            else:
                xs.insert(j, xs[j])
            slipped = (tuple(xs),)
        other = Task(f, task.prompt, FAMILIES[f].solve(slipped), slipped)
        # a wrong answer of the right kind; failing that (count_items of [8, 7, 9]: every slip's
        # count is one of the numbers, an echo, grade 1), any wrong answer
        if slipped[-1] and (grade(task, working(other)) == 2 or attempt >= 100 and other.answer != task.answer):
            return working(other)
    raise ValueError(f"could not make a slipped working for {task}")


def _fill_response(template: str, task: Task, wrong: str, direct: str = "") -> str:
    slots = {"ans": task.answer, "wrong": wrong, "direct": direct, "xs": "", "a": "", "b": "",
             "w": "", "c": "", "times": "times"}
    if task.family in ("add", "sub", "mul"):
        slots.update(a=task.args[0], b=task.args[1])
    elif task.family == "count_letter":
        slots.update(c=task.args[0], w=task.args[1], times="time" if task.answer == "1" else "times")
    elif task.family in ("reverse", "upper", "length"):
        slots.update(w=task.args[0])
    else:
        slots.update(xs=format_list(task.args[0]))
    return template.format(**slots)


def response_of_quality(task: Task, score: int, rng: random.Random) -> str:
    """A response that `grade` scores exactly `score` (0..5), drawn from varied wordings."""
    if not 0 <= score <= 5:
        raise ValueError(f"score must be in 0..5, got {score}")
    for _ in range(50):
        wrong = wrong_answer(task, rng)
        direct = _fill_response(rng.choice(DIRECT[task.family]), task, wrong)
        if score == 0:
            text = rng.choice(OFF_TOPIC)
        elif score == 1:
            text = _fill_response(rng.choice(ON_TOPIC_NO_ANSWER[task.family]), task, wrong)
        elif score == 2:
            text = _fill_response(rng.choice(WRONG), task, wrong)
        elif score == 3:
            text = _fill_response(rng.choice(INDIRECT), task, wrong, direct)
        elif score == 4:
            text = direct
        else:
            text = task.answer
        if grade(task, text) == score:
            return text
    raise ValueError(f"no response of quality {score} found for {task}")


STYLES = ("bare", "sentence", "hedged")


def crossed_replies(task: Task, rng: random.Random) -> list[tuple[str, bool, str]]:
    """A tell-free group: (reply, right?, style) for the right answer and one wrong answer, each
    bare ("68" / "71", grades 5 / 2), in a sentence ("The answer is 68.", 4 / 2) and hedged ("I
    think the answer is 68.", 3 / 2). Every wording occurs right and wrong, so no wording predicts
    correctness: a judge scores these well only by telling right answers from wrong ones."""
    wrong = wrong_answer(task, rng)
    out = []
    for answer, right in ((task.answer, True), (wrong, False)):
        sentence = _fill_response(rng.choice(DIRECT[task.family]), task, wrong) if right else None
        for style in STYLES:
            if style == "bare":
                text = answer
            elif style == "sentence":
                text = sentence if right else rng.choice(("The answer is {x}.", "It is {x}.")).format(x=answer)
            else:
                text = rng.choice(("I think the answer is {x}.", "Maybe {x}?", "Perhaps it is {x}.")).format(x=answer)
            out.append((text, right, style))
    return out


def responses_of_each_quality(task: Task, rng: random.Random) -> list[str]:
    """Six responses; the one at index s grades exactly s."""
    return [response_of_quality(task, s, rng) for s in range(6)]


if __name__ == "__main__":
    rng = random.Random(0)
    for family in FAMILY_NAMES:
        task = sample_task(rng, family)
        print(f"[{family}] {task.prompt}  ->  {task.answer}")
        for s, text in enumerate(responses_of_each_quality(task, rng)):
            print(f"   {s}: {text!r}")
