"""Build the built-in world in data/: seed data, held-out evaluation sets, tokenizer and base model M0.

Everything here comes from srlm/world.py (tasks whose answers code can check, and their 0-5
grader), drawn from one seeded random.Random, so the same --seed rebuilds the same files:

    ift.jsonl            seed instruction-following data {"prompt", "response"}: correct answers,
                         about half bare (grade 5), half one sentence with extra words (grade 4)
    eft.jsonl            seed judge-training data {"prompt": judge prompt (compact template),
                         "response": "<worked solution>\\n<check and verdict>\\nScore: s"}; s is the
                         grader's score, weighted towards wrong answers (SCORE_WEIGHTS)
    eft_checks.jsonl     more judge-training data, same form: per question a right reply and two
                         near misses (one slip from the right answer, as the model's own errors)
    seed_prompts.jsonl   the IFT prompts as a prompts.jsonl {"id", "prompt", "source": "seed"}:
                         the pool that self-instruction draws its few-shot examples from
    eval_prompts.jsonl   held-out prompts {"id", "prompt", "family"}
    ift_worked.jsonl, eft_worked.jsonl  the worked world (an experiment, `--ift data/ift_worked.jsonl
                         --eft data/eft.jsonl data/eft_checks.jsonl data/eft_worked.jsonl`): the same
                         IFT questions answered with the judge's worked solution (`working`), and
                         judge data on worked replies: per question the right working and two
                         slipped ones (`slipped_working`), so answers carry the judge's own skill
    eval_prompts_more.jsonl  700 more held-out prompts, same form, from the seven families whose
                         questions are not all used already (MORE_FAMILIES): a finer measure of
                         instruction following than eval_prompts.jsonl's 20 per family
    eval_groups.jsonl    held-out ranked groups {"id", "prompt", "replies", "ranks", "scores"}:
                         4 replies of distinct grader scores, rank 0 = best
    eval_tellfree.jsonl  the same questions as tell-free groups {..., "correct", "styles"}: the right
                         and a wrong answer, each bare, in a sentence and hedged
    pretrain.jsonl       the base-model corpus {"text"}: exercises with answers, exercises worked
                         step by step, grading notes, check drills (a reply's answer checked
                         against a worked result digit by digit), lists of requests (no answers), spellings,
                         digits and letters; no chat format
    tokenizer.model      SentencePiece BPE trained on all of the text above
    m0/                  the tiny base model M0, pretrained with our own `train.py --stage pretrain`

No question of the held-out sets (compared by task, not wording: "What is 2 + 3?" and "Add 2 and
3." are the same question) appears in the seed data or the corpus; eval_prompts_more.jsonl's
questions appear in no other file at all.

    python -m data.build                 # everything, ~30 minutes on a 2-core CPU
    python -m data.build --skip-model    # only the text files and the tokenizer (seconds)
"""
from __future__ import annotations

import argparse
import io
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from srlm.io import DataError, write_json, write_jsonl
from srlm.judge import COMPACT_TEMPLATE, judge_prompt
from srlm.self_instruct import build_few_shot_prompt
from srlm.world import (FAMILY_NAMES, LETTERS, WORDS, WRONG, Task, comparison, crossed_replies, grade,
                        judgement_text, near_miss, reply_answer, response_of_quality, sample_task,
                        slipped_working, working)

ROOT = Path(__file__).resolve().parents[1]

DATA_DIR = Path(__file__).resolve().parent
TEXT_FILES = ("ift.jsonl", "eft.jsonl", "eft_checks.jsonl", "seed_prompts.jsonl", "eval_prompts.jsonl",
              "eval_groups.jsonl", "eval_tellfree.jsonl", "pretrain.jsonl", "eval_prompts_more.jsonl",
              "ift_worked.jsonl", "eft_worked.jsonl")
# The families with questions to spare for eval_prompts_more.jsonl: every times-table question (121)
# and every word's reverse, uppercase and length question (144 words) is already asked somewhere in
# the seed data, the corpus or the held-out sets; of the other seven, at most half are.
MORE_FAMILIES = ("add", "sub", "count_letter", "count_items", "sort", "max", "min")
CHAT_SYMBOLS = ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "\n"]

# The tiny Llama that M0 is (about 1 M parameters); vocab_size is set from the tokenizer.
M0_CONFIG = dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, multiple_of=32, max_seq_len=512,
                 norm_eps=1e-5, rope_theta=10000.0, dropout=0.0)


# ----------------------------------------------------------------------------- drawing tasks

def draw_tasks(rng: random.Random, n: int, taken: set, unique: bool = True, seen: set | None = None,
               families: tuple[str, ...] = FAMILY_NAMES) -> list[Task]:
    """n tasks, none whose key is in `taken`, `families` in turn from a random first one.

    With unique=True every new key is added to `taken`, so no question repeats within or across
    the sets drawn after it. `seen`, if given, collects every key drawn (unique or not): build_text
    uses it to know every question that any file asks.
    """
    first = rng.randrange(len(families))
    tasks: list[Task] = []
    attempts = 0
    while len(tasks) < n:
        attempts += 1
        if attempts > 1000 * (n + 1):
            raise RuntimeError(f"could not draw {n} distinct tasks; the task space is too small")
        task = sample_task(rng, families[(first + len(tasks)) % len(families)])
        if task.key in taken:
            continue
        if unique:
            taken.add(task.key)
        if seen is not None:
            seen.add(task.key)
        tasks.append(task)
    return tasks


def eval_prompt_rows(tasks: list[Task], prefix: str = "eval") -> list[dict]:
    return [{"id": f"{prefix}-{i:04d}", "prompt": t.prompt, "family": t.family} for i, t in enumerate(tasks)]


def eval_group_rows(tasks: list[Task], rng: random.Random, group_size: int = 4) -> list[dict]:
    """Per task: `group_size` replies of distinct grader scores, shuffled; ranks by score (0 = best)."""
    rows = []
    for i, task in enumerate(tasks):
        scores = rng.sample(range(6), group_size)           # distinct, so ranks have no ties
        replies = [response_of_quality(task, s, rng) for s in scores]
        ranks = [sum(other > s for other in scores) for s in scores]
        rows.append({"id": f"group-{i:04d}", "prompt": task.prompt, "replies": replies,
                     "ranks": ranks, "scores": scores})
    return rows


def tellfree_rows(tasks: list[Task], rng: random.Random) -> list[dict]:
    """Tell-free groups: per question the right answer and one wrong answer, each bare, in a
    sentence and hedged (shuffled). No wording predicts correctness (in eval_groups.jsonl the
    hedged reply is always the wrong one: a judge can rank those by wording alone). Ranks by
    grader score, 0 = best; the three wrong replies tie at 2."""
    rows = []
    for i, task in enumerate(tasks):
        replies = crossed_replies(task, rng)
        rng.shuffle(replies)
        scores = [grade(task, r) for r, _, _ in replies]
        rows.append({"id": f"tellfree-{i:04d}", "prompt": task.prompt, "replies": [r for r, _, _ in replies],
                     "ranks": [sum(o > s for o in scores) for s in scores], "scores": scores,
                     "correct": [c for _, c, _ in replies], "styles": [s for _, _, s in replies]})
    return rows


def ift_rows(tasks: list[Task], rng: random.Random, share_bare: float = 0.5) -> list[dict]:
    """Seed answers in two styles, as people write them: about half the bare answer ("68", grade 5),
    the rest one correct sentence with extra words ("The answer is 68.", grade 4).

    Like OASST's human answers, the seed shows good but uneven replies; the judge's rubric (EFT)
    says which style is best. That gap is what self-rewarding can close on its own: M1 answers in
    both styles, its judge prefers the bare answer when it is right, and DPO moves towards it.
    """
    return [{"prompt": t.prompt, "response": t.answer if rng.random() < share_bare else response_of_quality(t, 4, rng)}
            for t in tasks]


# How often each grader score appears in the judge's seed data and grading notes, weighted towards
# wrong answers (score 2). With every score equally often, three in four judgements that check an
# answer say "they match", and M1 learnt to write its worked result where the reply's answer belongs
# and conclude "match" every time (measured: its verdict was "right" on all of its own samples).
# In eft.jsonl, with 3 distinct scores per question, a wrong answer can be at most a third of the
# rows, and is: 1/3 wrong, 1/6 each for scores 4 and 5, 1/9 each for 0, 1 and 3.
SCORE_WEIGHTS = (1, 1, 4, 1, 1.5, 1.5)


def eft_rows(tasks: list[Task], rng: random.Random, per_task: int = 3) -> list[dict]:
    """`per_task` judgements per task with distinct scores; the scores furthest below their share
    (SCORE_WEIGHTS) go first, so over the whole set each score comes as close to its weight's share
    as distinct scores per task allow (the paper rebalances its judge data too)."""
    counts = [0] * 6
    rows = []
    for task in tasks:
        order = sorted(range(6), key=lambda s: (counts[s] / SCORE_WEIGHTS[s], rng.random()))
        for s in sorted(order[:per_task]):
            counts[s] += 1
            response = response_of_quality(task, s, rng)
            rows.append({"prompt": judge_prompt(task.prompt, response, template=COMPACT_TEMPLATE),
                         "response": judgement_text(task, response, s)})
    rng.shuffle(rows)
    return rows


def eft_check_rows(tasks: list[Task], rng: random.Random) -> list[dict]:
    """More judge data on the hard case: per task one right reply (bare or in a sentence, grade 5
    or 4) and two near misses (`near_miss`: one slip from the right answer, in WRONG's wordings,
    grade 2), so that a wrong reply looks like the model's own mistakes, not a shuffled list."""
    rows = []
    for task in tasks:
        replies = [response_of_quality(task, rng.choice((4, 5)), rng)]
        replies += [rng.choice(WRONG).format(wrong=near_miss(task, rng)) for _ in range(2)]
        for response in replies:
            rows.append({"prompt": judge_prompt(task.prompt, response, template=COMPACT_TEMPLATE),
                         "response": judgement_text(task, response, grade(task, response))})
    rng.shuffle(rows)
    return rows


def eft_worked_rows(tasks: list[Task], rng: random.Random) -> list[dict]:
    """Judge data for the worked world: per task the right worked reply (grade 5) and two slipped
    ones (`slipped_working`: the question misread in one place, grade 2). The judgement works the
    question out itself, as always, so a reply's wrong steps are not copied into it."""
    rows = []
    for task in tasks:
        for response in (working(task), slipped_working(task, rng), slipped_working(task, rng)):
            rows.append({"prompt": judge_prompt(task.prompt, response, template=COMPACT_TEMPLATE),
                         "response": judgement_text(task, response, grade(task, response))})
    rng.shuffle(rows)
    return rows


def seed_prompt_rows(tasks: list[Task]) -> list[dict]:
    return [{"id": f"seed-{i:04d}", "prompt": t.prompt, "source": "seed"} for i, t in enumerate(tasks)]


# ----------------------------------------------------------------------------- the base corpus
# Plain text a base model might read: exercise sheets with solutions, grading notes, spellings.
# Nothing uses the [INST] chat format: M0 is a pretrained model, not an instruction-tuned one.

def _exercise_sheet(tasks: list[Task], rng: random.Random) -> str:
    style = rng.randrange(3)
    lines = []
    for k, t in enumerate(tasks, start=1):
        if style == 0:
            lines.append(f"Question: {t.prompt}\nAnswer: {t.answer}")
        elif style == 1:
            lines.append(f"Exercise {k}. {t.prompt}\nSolution: {t.answer}")
        else:
            lines.append(f"{t.prompt} {response_of_quality(t, 4, rng)}")
    return "\n\n".join(lines)


def _grading_notes(tasks: list[Task], rng: random.Random) -> str:
    notes = []
    for t in tasks:
        s = rng.choices(range(6), weights=SCORE_WEIGHTS)[0]
        reply = response_of_quality(t, s, rng)
        notes.append(f"Question: {t.prompt}\nAnswer: {reply}\n{judgement_text(t, reply, s)}")
    return "Grading notes. Each answer earns one point per criterion met, up to 5.\n\n" + "\n\n".join(notes)


def _worked_sheet(tasks: list[Task]) -> str:
    """Exercises solved step by step (the judge's worked solutions), then the answer."""
    return "\n\n".join(f"Question: {t.prompt}\n{working(t)}\nAnswer: {t.answer}" for t in tasks)


def _check_drill(tasks: list[Task], rng: random.Random) -> str:
    """Replies checked against a worked solution, unit by unit (a grading note without the score).

    That last step reads the answer out of the reply and compares it with the worked result one
    digit, letter or item at a time; a small model learns both only from many examples: two in five
    right answers, three in five near misses (one digit, one letter or two items apart), in every
    wording. The worked solution stays in the text: it holds other numbers, some equal to a wrong
    reply's, so "the reply's answer appears above" cannot stand in for the comparison.
    """
    lines = []
    for t in tasks:
        reply = response_of_quality(t, rng.choice((2, 2, 2, 4, 5)), rng)
        lines.append(f"Question: {t.prompt}\nAnswer: {reply}\n{working(t)}\n{comparison(t, reply_answer(t, reply))}")
    return "\n\n".join(lines)


def _request_list(tasks: list[Task]) -> str:
    """A numbered list of requests without answers, the shape of text self-instruction continues.

    A real base model has read many such lists on the web, which is why few-shot prompting it with
    one makes it write a new request. Our tiny M0 reads nothing but this corpus, so the corpus holds
    some: the same header and "Task k:" layout that srlm/self_instruct.py builds (that function
    writes them, so the two cannot drift apart), then one more task after the open label.
    """
    *examples, last = [t.prompt for t in tasks]
    return f"{build_few_shot_prompt(examples)} {last}"


def _spellings(words: list[str]) -> str:
    return "\n".join(f"The word {w} is spelled {' '.join(w)}." for w in words)


def pretrain_rows(rng: random.Random, taken: set, n_sheets: int, n_notes: int, n_lists: int,
                  n_worked: int = 0, n_drills: int = 0, seen: set | None = None) -> list[dict]:
    def draw(n):  # the corpus may repeat questions (unique=False), never held-out ones
        return draw_tasks(rng, n, taken, unique=False, seen=seen)

    docs = []
    for _ in range(n_sheets):
        docs.append(_exercise_sheet(draw(8), rng))
    for _ in range(n_notes):
        docs.append(_grading_notes(draw(4), rng))
    for _ in range(n_lists):
        docs.append(_request_list(draw(9)))
    for _ in range(n_worked):
        docs.append(_worked_sheet(draw(4)))
    for _ in range(n_drills):
        docs.append(_check_drill(draw(4), rng))
    words = list(WORDS)
    for _ in range(4):
        rng.shuffle(words)
        for i in range(0, len(words), 12):
            docs.append(_spellings(words[i:i + 12]))
    docs.append("Digits: " + " ".join(str(d) for d in range(10)) + ". Counting: "
                + " ".join(str(n) for n in range(1, 101)) + ".")
    docs.append("Letters: " + " ".join(LETTERS) + ". Capital letters: " + " ".join(LETTERS.upper()) + ".")
    rng.shuffle(docs)
    return [{"text": d} for d in docs]


# ----------------------------------------------------------------------------- the whole text set

def build_text(seed: int = 0, n_eval: int = 220, n_groups: int = 55, n_ift: int = 495,
               n_eft_tasks: int = 396, n_sheets: int = 1500, n_notes: int = 1000,
               n_lists: int = 400, n_worked: int = 1500, n_drills: int = 1500,
               n_check_tasks: int = 400, n_more: int = 700, n_worked_tasks: int = 300) -> dict[str, list[dict]]:
    """All JSONL files of the world as {file name: rows}; the same arguments give the same rows.

    Held-out sets are drawn first and their questions reserved; IFT and EFT questions are
    distinct from each other's too; the corpus may repeat training questions, never held-out ones.
    """
    rng = random.Random(seed)
    taken: set = set()
    seen: set = set()  # every question any file asks
    eval_tasks = draw_tasks(rng, n_eval, taken, seen=seen)
    group_tasks = draw_tasks(rng, n_groups, taken, seen=seen)
    held_out = set(taken)
    ift_tasks = draw_tasks(rng, n_ift, taken, seen=seen)
    eft_tasks = draw_tasks(rng, n_eft_tasks, taken, seen=seen)
    files = {
        "eval_prompts.jsonl": eval_prompt_rows(eval_tasks),
        "eval_groups.jsonl": eval_group_rows(group_tasks, rng),
        "ift.jsonl": ift_rows(ift_tasks, rng),
        "seed_prompts.jsonl": seed_prompt_rows(ift_tasks),
        "eft.jsonl": eft_rows(eft_tasks, rng),
        "pretrain.jsonl": pretrain_rows(rng, held_out, n_sheets, n_notes, n_lists, n_worked, n_drills, seen),
        # the same held-out questions as eval_groups.jsonl, from a second generator, so adding
        # this file changed no other file (and not M0)
        "eval_tellfree.jsonl": tellfree_rows(group_tasks, random.Random(seed + 1)),
        # likewise from a third generator: no other file changed, and the tokenizer does not read it
        "eft_checks.jsonl": eft_check_rows(draw_tasks(random.Random(seed + 2), n_check_tasks,
                                                      set(held_out), seen=seen), random.Random(seed + 3)),
    }
    # Last, from a fifth generator (no other file changes; the tokenizer does not read it): more
    # held-out questions, none asked anywhere above, so none was ever trained on.
    more_tasks = draw_tasks(random.Random(seed + 4), n_more, set(seen), families=MORE_FAMILIES)
    files["eval_prompts_more.jsonl"] = eval_prompt_rows(more_tasks, prefix="more")
    # The worked world, last (no other file changes; the tokenizer does not read these): the IFT
    # questions answered with their worked solution, and judge data on worked replies from a sixth
    # generator, on questions none of the held-out sets asks.
    files["ift_worked.jsonl"] = [{"prompt": t.prompt, "response": working(t)} for t in ift_tasks]
    files["eft_worked.jsonl"] = eft_worked_rows(draw_tasks(random.Random(seed + 5), n_worked_tasks,
                                                           held_out | {t.key for t in more_tasks}, seen=seen), random.Random(seed + 6))
    return files


# ----------------------------------------------------------------------------- tokenizer

def tokenizer_sentences(files: dict[str, list[dict]]) -> list[str]:
    """Every text the model will read: corpus documents, chat turns of the seed data, judge prompts."""
    out = [r["text"] for r in files["pretrain.jsonl"]]
    for name in ("ift.jsonl", "eft.jsonl"):
        out += [f"[INST] {r['prompt']} [/INST] {r['response']}" for r in files[name]]
    out += [f"[INST] {r['prompt']} [/INST]" for r in files["eval_prompts.jsonl"]]
    out.append("[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHello. [/INST]")
    return out


def train_tokenizer(sentences: list[str], vocab_size: int) -> bytes:
    """A SentencePiece BPE model (serialised) trained deterministically on `sentences`.

    unk=0, bos=1, eos=2, no pad; digits always split into single pieces; the chat markers and
    the newline are whole pieces (identity normalisation keeps newlines, which the judge's
    "Score:" line needs).
    """
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=buf, vocab_size=vocab_size,
        model_type="bpe", user_defined_symbols=CHAT_SYMBOLS, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        character_coverage=1.0, byte_fallback=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
        max_sentence_length=16384, minloglevel=2)
    return buf.getvalue()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


# ----------------------------------------------------------------------------- M0

def pretrain_m0(out_dir: Path, seed: int, steps: int, lr: float) -> None:
    """Pretrain M0 on pretrain.jsonl with our own train.py (a subprocess: a clean, separate run).

    It trains into data/.m0.building (train.py keeps its resumable state in .m0.building.train,
    so running build.py again after a crash resumes); only a finished checkpoint replaces m0/,
    and the resumable state is then removed: data/ keeps the checkpoint and its metrics.jsonl.
    """
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model")).vocab_size()
    write_json(out_dir / "m0_config.json", {**M0_CONFIG, "vocab_size": vocab})
    building, final = out_dir / ".m0.building", out_dir / "m0"
    cmd = [sys.executable, str(ROOT / "train.py"), "--stage", "pretrain",
           "--data", str(out_dir / "pretrain.jsonl"), "--model-config", str(out_dir / "m0_config.json"),
           "--tokenizer", str(out_dir / "tokenizer.model"), "--out", str(building),
           "--seed", str(seed), "--max-steps", str(steps), "--lr", str(lr), "--min-lr", str(lr / 10),
           "--batch-size", "16", "--micro-batch-size", "16", "--device", "cpu"]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    shutil.rmtree(final, ignore_errors=True)
    building.rename(final)
    shutil.rmtree(out_dir / ".m0.building.train", ignore_errors=True)


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DATA_DIR, help="folder to write into (default: data/)")
    p.add_argument("--vocab-size", type=int, default=640)
    p.add_argument("--pretrain-steps", type=int, default=3000, help="optimizer steps of 16 documents")
    p.add_argument("--pretrain-lr", type=float, default=2e-3, help="peak learning rate (decays to a tenth)")
    p.add_argument("--skip-model", action="store_true", help="write the text files and tokenizer only")
    args = p.parse_args(argv)

    if args.out.exists() and not args.out.is_dir():
        raise DataError(f"{args.out}: --out must be a folder (or not exist yet); this is a file")
    if args.vocab_size < 64 or args.pretrain_steps < 1 or not args.pretrain_lr > 0:
        raise ValueError("--vocab-size must be >= 64, --pretrain-steps >= 1 and --pretrain-lr > 0")
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    files = build_text(seed=args.seed)
    for name in TEXT_FILES:
        write_jsonl(args.out / name, files[name])
        size = (args.out / name).stat().st_size
        print(f"wrote {args.out / name}: {len(files[name])} rows, {size / 1024:.0f} KiB")

    model = train_tokenizer(tokenizer_sentences(files), args.vocab_size)
    write_bytes_atomic(args.out / "tokenizer.model", model)
    print(f"wrote {args.out / 'tokenizer.model'}: vocab {args.vocab_size}, {len(model) / 1024:.0f} KiB")

    if not args.skip_model:
        pretrain_m0(args.out, args.seed, args.pretrain_steps, args.pretrain_lr)
        print(f"wrote {args.out / 'm0'}")
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    from srlm.cli import run_cli

    run_cli(main, "python -m data.build")  # bad input: one line, exit 2
