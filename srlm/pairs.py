"""The self-rewarding step: the model judges its own candidates, and the scores become pairs.

    candidates.jsonl -> judgements.jsonl -> pairs.jsonl (+ judge_summary.json)

Each candidate answer is put in the judge prompt (srlm/judge.py, the paper's additive 5-point
rubric) and judged K times by sampling; the parsed scores are averaged (candidates with fewer
than `min_valid` parsed judgements are dropped; identical answers to one prompt are judged once
and share those judgements, so copies tie and never form a pair); per prompt, the best-scored
candidate becomes "chosen" and the worst "rejected" (ties give no pair).

    judgements.jsonl  one line per (prompt id, candidate index):
                      {"id", "candidate_index", "judgements": [raw text x K],
                       "scores": [float | None x K], "mean_score"}
    pairs.jsonl       {"id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score"}
    judge_summary.json  parse-failure rate, pairs built, score histogram

    from srlm.pairs import JudgeSettings, write_pairs
    write_pairs(model, tokenizer, "iter1/candidates.jsonl", "iter1/judgements.jsonl", "iter1/pairs.jsonl",
                JudgeSettings(k=3))

Defaults: K = 3 judgements as in the paper, sampled at temperature 0.7 and top-p 0.9 (the
paper's sampling settings for answers; averaging K samples only reduces noise when the samples
differ, so greedy decoding would make K > 1 pointless), min_valid 1 (the paper drops only the
judgements that do not parse).

Resumable: work is cut into chunks of `chunk_size` candidates; each finished chunk is appended to
`<judgements>.partial` (`.partial.rank{r}` under torchrun: srlm.io.partial_log); a rerun skips
what is there (and a finished judgements.jsonl) and only rebuilds the pairs. Chunk c is sampled with seed + c, so a chunk redone after a kill gives
the same texts. Under torchrun, chunks are shared round-robin over the ranks; rank 0 merges.
A judgement is reused only when its "input_hash" (the prompt and candidate texts, the judge
settings, the model's weights) matches: reordered or edited candidates are judged again. An
output is never replaced by one with fewer rows unless `overwrite=True`; the summary is written
before pairs.jsonl (the file that marks the step done), so a kill cannot lose it.

Reward-model evaluation (the paper's table) judges every reply of human-ranked groups
({"prompt", "replies", "ranks"}) the same way and compares with the ranks: `judge_groups`.

The command line is judge.py; tests: tests/test_pairs.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tqdm import tqdm

from srlm import dist
from srlm.io import (DataError, all_partial_logs, append_jsonl, check_replace, input_hash, partial_log, read_jsonl,
                     read_jsonl_partial, write_json, write_jsonl)
from srlm.judge import (aggregate_scores, judge_prompt, load_template, make_model_judge, pairs_from_judgements,
                        parse_score)
from srlm.metrics import reward_model_metrics


@dataclass
class JudgeSettings:
    k: int = 3                          # judgements per candidate (paper: 3)
    min_valid: int = 1                  # parsed judgements a candidate needs
    min_margin: float = 0.0             # smallest chosen - rejected score gap that makes a pair
    template: str = "default"           # 'default', 'compact' or a template file
    score_pattern: Optional[str] = None  # regex with a (?P<score>...) group (None: 'Score: N' lines)
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    batch_size: int = 64                # rows per forward pass (why 64: BENCHMARKS.md, small choices)
    chunk_size: int = 64                # candidates per resumable chunk
    seed: int = 0
    reply_after: str = ""               # judge only the text after this marker (srlm.judge.reply_view)

    def check(self) -> str:
        """Fail on bad settings before a model is loaded; returns the template text."""
        from srlm.sampling import check_sampling

        template = load_template(self.template)
        if self.score_pattern:
            parse_score("", self.score_pattern)
        check_sampling(self.temperature, self.top_p)
        for name in ("k", "max_new_tokens", "batch_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.min_valid < 1 or self.min_valid > self.k:
            raise ValueError(f"--min-valid must be in [1, --k={self.k}], got {self.min_valid}")
        if not 0 <= self.min_margin <= 5:
            raise ValueError(f"--min-margin must be in [0, 5], got {self.min_margin}")
        return template

    def context(self, model, tokenizer) -> dict:
        """Everything besides the texts that a judgement depends on (its resume key, input_hash)."""
        from srlm.loading import model_id

        return {"model": model_id(model, tokenizer), "template": load_template(self.template), "k": self.k,
                "score_pattern": self.score_pattern, "temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens, "seed": self.seed}

    def judge_fn(self, model, tokenizer) -> Callable:
        return make_model_judge(model, tokenizer, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                top_p=self.top_p, seed=self.seed, batch_size=self.batch_size)


# ----------------------------------------------------------------------------- inputs

def load_candidates(path: str | Path) -> list[dict]:
    """candidates.jsonl rows {"id", "prompt", "candidates": [str, ...]}, checked (file:line: key)."""
    rows = read_jsonl(path, required=("id", "prompt", "candidates"),
                      types={"id": "id", "prompt": "str", "candidates": "list[str]"}, unique="id")
    if not rows:
        raise DataError(f"{path}: no candidates in this file")
    return rows


def _check_group(g: dict) -> Optional[str]:
    if len(g["ranks"]) != len(g["replies"]):
        return f"key 'ranks' has {len(g['ranks'])} ranks for {len(g['replies'])} replies"
    return None


def load_groups(path: str | Path) -> list[dict]:
    """Ranked groups {"prompt", "replies", "ranks"} (+ optional "id") as candidates-like rows."""
    groups = read_jsonl(path, required=("prompt", "replies", "ranks"),
                        types={"id": "id", "prompt": "str", "replies": "list[str]", "ranks": "list[number]"},
                        unique="id", check=_check_group)
    if not groups:
        raise DataError(f"{path}: no groups in this file")
    rows = []
    for n, g in enumerate(groups, start=1):
        rows.append({"id": str(g.get("id", n)), "prompt": g["prompt"], "candidates": g["replies"],
                     "ranks": g["ranks"]})
    if len({r["id"] for r in rows}) != len(rows):
        raise DataError(f"{path}: duplicate group ids")
    return rows


# ----------------------------------------------------------------------------- judging

def work_units(rows: list[dict]) -> list[tuple[str, int, str, str]]:
    """(id, candidate index, prompt, candidate) for every candidate, in file order."""
    return [(str(r["id"]), i, r["prompt"], c) for r in rows for i, c in enumerate(r["candidates"])]


def first_copies(units: list[tuple[str, int, str, str]]) -> dict:
    """(id, candidate index) -> (id, index of the first candidate of that prompt with the same text).

    Identical answers to one prompt are judged once: the judge sees the same text, so further
    judgements of a copy would only add sampling noise, and a pair of two copies (chosen ==
    rejected) would give DPO nothing to learn. With N = 4 short answers, a quarter of the
    candidates are such copies in the built-in world.
    """
    first: dict = {}
    return {(rid, idx): first.setdefault((rid, cand), (rid, idx)) for rid, idx, _, cand in units}


def _reusable(rows, want: dict) -> dict:
    """(id, candidate index) -> row, for the rows whose input_hash is the one wanted now."""
    out = {}
    for r in rows:
        if isinstance(r, dict) and r.get("input_hash") is not None:
            key = (str(r.get("id")), r.get("candidate_index"))
            if want.get(key) == r["input_hash"]:
                out.setdefault(key, r)
    return out


def judge_candidates(rows: list[dict], judge_fn: Callable, judgements: str | Path, *, k: int = 3,
                     min_valid: int = 1, template: str | None = None, pattern: str | None = None,
                     chunk_size: int = 64, seed: int = 0, rank: int = 0, world_size: int = 1,
                     progress: bool = True, context: Optional[dict] = None,
                     overwrite: bool = False, reply_after: str = "") -> list[dict] | None:
    """Judge every candidate k times; write judgements.jsonl. Returns its rows on rank 0.

    `judge_fn(judge_prompts, seed=...) -> texts` (srlm.judge.make_model_judge, or a fake in
    tests). `context`: what else the judgements depend on (JudgeSettings.context: model, settings);
    with the prompt and candidate texts it makes each row's input_hash. Resumable: see the module
    docstring. All ranks must call this (it has barriers).
    """
    if k < 1:
        raise ValueError(f"k (judgements per candidate) must be >= 1, got {k}")
    judgements = Path(judgements)
    units = work_units(rows)
    copy_of = first_copies(units)
    context = {"k": k, "template": template, "score_pattern": pattern, "seed": seed, **(context or {})}
    if reply_after:  # only then, so that earlier judgements keep their hash
        context["reply_after"] = reply_after
    want = {(rid, idx): input_hash({"prompt": prompt, "candidate": cand, **context})
            for rid, idx, prompt, cand in units}
    if rank == 0:
        check_replace(judgements, len(units), overwrite, what="judgement rows")  # before any work
    old_rows = [r for log in all_partial_logs(judgements) for r in read_jsonl_partial(log)]
    if judgements.is_file():
        old_rows += read_jsonl(judgements)
    done = set(_reusable(old_rows, want))
    to_judge = [u for u in units if copy_of[u[:2]] == u[:2]]   # each distinct answer of a prompt once
    chunks = [to_judge[i:i + chunk_size] for i in range(0, len(to_judge), chunk_size)]
    mine = [(c, chunk) for c, chunk in enumerate(chunks)
            if c % world_size == rank and any((u[0], u[1]) not in done for u in chunk)]
    log = partial_log(judgements, rank, world_size)
    if progress and rank == 0 and mine:
        mine = tqdm(mine, desc=f"judging x{k}", unit="chunk")
    for c, chunk in mine:
        prompts = [judge_prompt(prompt, cand, template, reply_after) for _, _, prompt, cand in chunk
                   for _ in range(k)]
        texts = judge_fn(prompts, seed=seed + c)                # (len(chunk) * k,) judgement texts
        out = []
        for j, (rid, idx, _, _) in enumerate(chunk):
            raw = texts[j * k:(j + 1) * k]
            scores = [parse_score(t, pattern) for t in raw]
            out.append({"id": rid, "candidate_index": idx, "judgements": raw, "scores": scores,
                        "mean_score": aggregate_scores(scores, min_valid), "input_hash": want[(rid, idx)]})
        append_jsonl(log, out)
    dist.barrier()
    result = None
    if rank == 0:
        by_key = _reusable([r for path in all_partial_logs(judgements) for r in read_jsonl_partial(path)]
                           + (read_jsonl(judgements) if judgements.is_file() else []), want)
        missing = [u[:2] for u in to_judge if u[:2] not in by_key]
        if missing:
            raise RuntimeError(f"{len(missing)} candidates were not judged, e.g. {missing[:3]}")
        result = [dict(by_key[copy_of[u[:2]]], candidate_index=u[1]) for u in units]   # copies share
        for r in result:   # --min-valid may differ from the run that wrote a row
            r["mean_score"] = aggregate_scores(r["scores"], min_valid)
        write_jsonl(judgements, result)
        for path in all_partial_logs(judgements):
            path.unlink()
    dist.barrier()
    return result


# ----------------------------------------------------------------------------- the two uses

def _judge(model, tokenizer, rows, judgements, s: JudgeSettings, rank: int, world_size: int, overwrite: bool):
    """judge_candidates with the settings of `s` and this model as the judge."""
    return judge_candidates(rows, s.judge_fn(model, tokenizer), judgements, k=s.k, min_valid=s.min_valid,
                            template=s.check(), pattern=s.score_pattern, chunk_size=s.chunk_size,
                            seed=s.seed, rank=rank, world_size=world_size, context=s.context(model, tokenizer),
                            overwrite=overwrite, reply_after=s.reply_after)


def write_pairs(model, tokenizer, candidates, judgements, pairs, s: JudgeSettings, *, summary=None,
                overwrite: bool = False, rank: int = 0, world_size: int = 1) -> Optional[dict]:
    """candidates.jsonl -> judgements.jsonl -> pairs.jsonl and judge_summary.json (default: next to
    `pairs`). Every rank calls this; rank 0 writes the files and returns the summary."""
    rows = load_candidates(candidates)
    judged = _judge(model, tokenizer, rows, judgements, s, rank, world_size, overwrite)
    if rank != 0:
        return None
    pairs = Path(pairs)
    built, stats = pairs_from_judgements(rows, judged, s.min_valid, source=str(judgements),
                                         min_margin=s.min_margin)
    check_replace(pairs, len(built), overwrite, what="pairs")
    write_json(Path(summary or pairs.parent / "judge_summary.json"), stats)  # first: pairs.jsonl marks the step done
    write_jsonl(pairs, built)
    return stats


def judge_groups(model, tokenizer, groups, judgements, metrics, s: JudgeSettings, *, overwrite: bool = False,
                 rank: int = 0, world_size: int = 1) -> Optional[dict]:
    """Reward-model metrics of the judge on human-ranked groups (srlm/metrics.py), written to `metrics`
    (JSON; NaN written as null). Every rank calls this; rank 0 returns the metrics."""
    rows = load_groups(groups)
    judged = _judge(model, tokenizer, rows, judgements, s, rank, world_size, overwrite)
    if rank != 0:
        return None
    mean = {(r["id"], r["candidate_index"]): r["mean_score"] for r in judged}
    scored = [{"ranks": g["ranks"], "scores": [mean[(g["id"], i)] for i in range(len(g["candidates"]))]}
              for g in rows]
    out = reward_model_metrics(scored)
    _, stats = pairs_from_judgements(rows, judged, s.min_valid, source=str(judgements))
    out["parse_failure_rate"] = stats["parse_failure_rate"]
    out = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}
    write_json(Path(metrics), out)
    return out
