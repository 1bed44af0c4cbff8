"""The self-rewarding loop, end to end: M0 -> SFT (IFT + EFT) = M1 -> M2 -> M3 ...

This driver only sequences the steps; each step is one library function (the CLIs train.py,
generate.py and judge.py are thin shells over the same functions):

    M1 = srlm.trainer.train (stage sft)  on IFT + EFT, from M0
    for t in 1..iterations:                        (current model M_t)
        prompts.jsonl     = srlm.prompts.write_prompts       (self-instruction, few-shot from the seed;
                                                              written by M_t, or a fixed model: --prompt-model)
        candidates.jsonl  = srlm.candidates.write_candidates (N answers per prompt)
        judgements.jsonl,
        pairs.jsonl       = srlm.pairs.write_pairs           (K judgements per answer -> AIFT pairs)
        M_{t+1}           = srlm.trainer.train (stage dpo)   (from M_t, which is also the reference)
    after every model: srlm/evaluate.py (instruction following + reward modelling)

Each model is loaded once for sampling (srlm.loading.load_for_inference) and handed to every step
that samples from it: its evaluation, then the next iteration's prompts, candidates and
judgements; it is let go before training, which needs the memory.

Everything lands in one run directory, a folder per iteration, so each file can be opened to see
what the model wrote and why a pair was chosen:

    runs/default/settings.json
    runs/default/m1/                      SFT checkpoint (HF format) + metrics.jsonl
    runs/default/iter1/prompts.jsonl candidates.jsonl judgements.jsonl pairs.jsonl model/   (model = M2)
                      prompts_summary.json judge_summary.json   (prompts tried and rejected; score counts)
    runs/default/iter2/...                                                                  (model = M3)
    runs/default/eval/m1.json m1_answers.jsonl m1_answers_more.jsonl m1_judgements.jsonl m1_own_samples.jsonl ...
    runs/default/results.json results.md  the table printed at the end

Each step is skipped when its output exists, and each step resumes its own partial work, so killing
the command at any point and running it again loses nothing already finished. Every input (data
files, M0's config and tokenizer, the judge template) is checked before anything is written, and a
run directory is continued only with the settings (and input files) recorded in its settings.json:
other ones are refused, naming each difference (--iterations, --device, --skip-eval and
--eval-prompts-more may change: an evaluation is redone when its own inputs change).

    python -m srlm.loop                                   # built-in default (data/), 2-core CPU, minutes
    python -m srlm.loop --run-dir runs/llama --base-model llama-2-7b-hf \\
        --ift oasst/ift.jsonl --eft oasst/eft.jsonl --seed-prompts oasst/ift.jsonl --settings paper
    torchrun --nproc_per_node 8 -m srlm.loop ...          # every step shards over the ranks
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from srlm import dist
from srlm.candidates import CandidateSettings, write_candidates
from srlm.chat import FORMATS
from srlm.evaluate import evaluate_model, head_to_head, load_answers, read_eval_prompts
from srlm.io import DataError, atomic_write_text, check_settings, file_hash, read_jsonl, write_json, write_jsonl
from srlm.loading import load_for_inference
from srlm.pairs import JudgeSettings, write_pairs
from srlm.prompts import SelfInstructSettings, write_prompts
from srlm.trainer import TrainConfig, train

DATA = Path(__file__).resolve().parents[1] / "data"

# Two sets of defaults. "paper": the paper's hyperparameters, for a real Llama-2 checkpoint.
# "tiny": the built-in world's 1-2M-parameter model on a CPU; it needs far larger learning rates
# and fewer, shorter samples to learn anything within minutes. Its prompts come from templates
# ("Reverse the word X."), so two prompts of one task family share most words: ROUGE-L 0.75-0.9
# apart from the argument. Self-Instruct's 0.7 would reject whole families as near-duplicates;
# 0.9 rejects only repeats of the same question. The tiny model's prompts come from M0, a fixed
# writer: the chat-tuned M_t continues few-shot request lists far less faithfully (in the previous
# world about half its prompts matched no task), and a pair on such a prompt is one nobody, judge
# or grader, can check. Judgements work the question out step by step and check the answer unit by
# unit: up to about 215 tokens (sorting five numbers), hence 224. This 1M-parameter model learns
# from pairs only in bulk: DPO on 45-80 pairs an iteration moves its answers by about a point,
# whatever the lr, while hundreds at a lower lr move them by several (README, "What was tried").
# So the tiny setting asks 768 prompts an iteration and samples one judgement per answer (K = 1,
# the paper has 3; a quarter of the answers are copies, judged once), with DPO at 3e-5 (at 5e-5
# the answers gained less on the two seeds tried). Its SFT batches are grouped by length: the
# 30-token instructions and 190-token judgements would otherwise pad each other.
SETTINGS = {
    "paper": dict(num_prompts=1000, n_candidates=4, n_judgements=3, judge_template="default",
                  prompt_temperature=0.6, response_temperature=0.7, judge_temperature=0.7, top_p=0.9,
                  max_new_tokens=512, judge_max_new_tokens=256, prompt_max_new_tokens=128,
                  sft_lr=5.5e-6, sft_min_lr=1.1e-6, sft_epochs=1.0, sft_batch_size=16, sft_dropout=0.1,
                  sft_group_by_length=0, dpo_lr=1e-6, dpo_min_lr=1e-7, dpo_epochs=1.0, dpo_batch_size=16, beta=0.1,
                  dpo_nll_alpha=0.0, min_margin=0.0, judge_reply_after="",
                  eval_max_new_tokens=512, prompt_model="current", similarity_threshold=0.7, eval_own_samples=0),
    "tiny": dict(num_prompts=768, n_candidates=4, n_judgements=1, judge_template="compact",
                 prompt_temperature=0.6, response_temperature=0.7, judge_temperature=0.7, top_p=0.9,
                 max_new_tokens=24, judge_max_new_tokens=224, prompt_max_new_tokens=48,
                 sft_lr=1e-3, sft_min_lr=1e-4, sft_epochs=2.0, sft_batch_size=16, sft_dropout=0.1,
                 sft_group_by_length=8, dpo_lr=3e-5, dpo_min_lr=3e-6, dpo_epochs=1.0, dpo_batch_size=16, beta=0.1,
                 dpo_nll_alpha=0.0, min_margin=0.0, judge_reply_after="",
                 eval_max_new_tokens=24, prompt_model="base", similarity_threshold=0.9, eval_own_samples=4),
}

HELP = {
    "num_prompts": "new prompts self-instructed per iteration",
    "n_candidates": "candidate answers sampled per prompt (N)",
    "n_judgements": "judgements sampled per candidate, averaged (K)",
    "judge_template": "judge prompt: 'default' (the paper's rubric), 'compact' or a template file",
    "prompt_temperature": "sampling temperature when writing prompts",
    "response_temperature": "sampling temperature for candidate answers",
    "judge_temperature": "sampling temperature for judgements",
    "top_p": "nucleus sampling threshold, every sampling step",
    "max_new_tokens": "longest candidate answer, in tokens",
    "judge_max_new_tokens": "longest judgement, in tokens",
    "prompt_max_new_tokens": "longest self-instructed prompt, in tokens",
    "sft_lr": "SFT peak learning rate",
    "sft_min_lr": "SFT learning rate at the last step (cosine decay)",
    "sft_epochs": "SFT epochs over IFT + EFT",
    "sft_batch_size": "SFT sequences per optimizer step",
    "sft_dropout": "SFT dropout",
    "sft_group_by_length": "SFT: sort rows by length within windows of this many batches, to pad less (0: off)",
    "dpo_lr": "DPO peak learning rate",
    "dpo_min_lr": "DPO learning rate at the last step",
    "dpo_epochs": "DPO epochs over an iteration's pairs",
    "dpo_batch_size": "DPO pairs per optimizer step",
    "judge_reply_after": "the judge sees only the text after the last such marker of a reply (e.g. 'That gives ')",
    "min_margin": "smallest judge-score gap between chosen and rejected that makes a pair",
    "dpo_nll_alpha": "DPO + NLL: weight of the chosen answer's per-token NLL (0: plain DPO)",
    "beta": "DPO beta: how far the policy may move from the reference",
    "eval_max_new_tokens": "longest answer in the evaluation, in tokens",
    "prompt_model": "who writes the prompts: 'current' (M_t), 'base' (M0) or a checkpoint directory",
    "similarity_threshold": "ROUGE-L at which a new prompt counts as a near-duplicate",
    "eval_own_samples": "answers sampled per held-out prompt for the judge's AUC on its own samples (0: skip)",
}


def log(msg: str) -> None:
    if dist.is_main():
        print(f"[loop {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def step(name: str, output: Path, fn) -> None:
    """Run one step unless its final output already exists (each step writes it atomically, last)."""
    if output.exists():
        log(f"{name}: done already ({output})")
        return
    log(f"{name} -> {output}")
    fn()
    dist.barrier()


# Flags that may change when a run directory is continued: where it runs and how far it goes.
# eval_prompts_more only adds an evaluation column; each evaluation is keyed by its own input hash.
RESTARTABLE = ("device", "iterations", "skip_eval", "run_dir", "eval_prompts_more")
# Settings added after earlier runs were recorded, with the value those runs used.
ADDED = {"dpo_nll_alpha": 0.0, "min_margin": 0.0, "judge_reply_after": ""}


def check_values(a, s: dict) -> None:
    """The settings that are numbers (counts, rates, thresholds) and the run directory, by flag."""
    run_dir = Path(a.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise DataError(f"{run_dir}: --run-dir must be a folder (or not exist yet); this is a file")
    for key in ("num_prompts", "n_candidates", "n_judgements", "max_new_tokens", "judge_max_new_tokens",
                "prompt_max_new_tokens", "eval_max_new_tokens", "sft_batch_size", "dpo_batch_size"):
        if s[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {s[key]}")
    for key in ("sft_epochs", "dpo_epochs", "sft_lr", "dpo_lr", "beta"):
        if not s[key] > 0:
            raise ValueError(f"--{key.replace('_', '-')} must be > 0, got {s[key]}")
    for key in ("prompt_temperature", "response_temperature", "judge_temperature"):
        if not s[key] >= 0:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 0, got {s[key]}")
    if not 0 < s["top_p"] <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {s['top_p']}")
    if not 0 < s["similarity_threshold"] <= 1:
        raise ValueError(f"--similarity-threshold must be in (0, 1], got {s['similarity_threshold']}")
    if s["eval_own_samples"] < 0 or a.iterations < 0:
        raise ValueError("--eval-own-samples and --iterations must be >= 0")


# M0's weights are read in full up front when they are at most this large (SmolLM2-135M in float32
# is 0.54 GB); a larger M0 gets its config and tokenizer checked here and its weights when SFT loads them.
MAX_CHECKED_BYTES = 2 * 2**30


def check_inputs(a, s: dict) -> dict:
    """Read and check every input before anything is written; returns their content hashes.

    A bad file fails here with its DataError/CheckpointError (file, line, key), not after SFT.
    """
    from srlm.checkpoint import CheckpointError, load_hf_args, load_model
    from srlm.data import load_rows
    from srlm.judge import load_template, parse_score
    from srlm.pairs import load_groups
    from srlm.prompts import read_prompt_pool
    from srlm.tokenizer import load_tokenizer

    check_values(a, s)
    base = Path(a.base_model)
    if not base.is_dir():
        raise CheckpointError(f"{base}: --base-model directory not found")
    if (base / "config.json").is_file():
        context = load_hf_args(base).max_seq_len
        for key in ("max_new_tokens", "judge_max_new_tokens", "prompt_max_new_tokens", "eval_max_new_tokens"):
            if s[key] >= context:  # every prompt would be skipped as too long: empty answers, no error
                raise ValueError(f"--{key.replace('_', '-')} {s[key]} leaves no room for a prompt in M0's context "
                                 f"({base / 'config.json'}: {context} tokens); the {a.settings!r} settings do not "
                                 f"fit this model: pass smaller values or --settings tiny")
    weights = [f for pattern in ("*.safetensors", "consolidated.*.pth") for f in base.glob(pattern)]
    if sum(f.stat().st_size for f in weights) <= MAX_CHECKED_BYTES:
        load_model(base)  # every tensor read and checked (names, shapes, finite) before anything is written
    load_tokenizer(a.tokenizer or base, a.chat)
    load_rows([a.ift, *a.eft], "sft")
    read_prompt_pool(a.seed_prompts)
    if s["prompt_model"] not in ("current", "base"):
        writer = Path(s["prompt_model"])
        if not writer.is_dir():
            raise CheckpointError(f"{writer}: --prompt-model directory not found")
        load_hf_args(writer)
        load_tokenizer(writer)
    load_template(s["judge_template"])
    if a.score_pattern:
        parse_score("", a.score_pattern)
    files = {"ift": a.ift, "eft": a.eft[0], "seed_prompts": a.seed_prompts}
    files.update({f"eft{i}": path for i, path in enumerate(a.eft[1:], start=2)})
    if not a.skip_eval:
        read_eval_prompts(a.eval_prompts)
        load_groups(a.eval_groups)
        files.update(eval_prompts=a.eval_prompts, eval_groups=a.eval_groups)
        if more_prompts(a):
            read_eval_prompts(more_prompts(a))
    config = next((base / n for n in ("config.json", "params.json") if (base / n).is_file()), None)
    if config is not None:
        files["base_model_config"] = config
    return {name: file_hash(path) for name, path in files.items()}


def more_prompts(a) -> str | None:
    """The second held-out prompt set: --eval-prompts-more, else the built-in world's
    eval_prompts_more.jsonl when --eval-prompts is the built-in one; "none" skips it."""
    if a.eval_prompts_more is not None:
        return None if a.eval_prompts_more.lower() == "none" else a.eval_prompts_more
    built_in = Path(a.eval_prompts).resolve() == (DATA / "eval_prompts.jsonl").resolve()
    return str(DATA / "eval_prompts_more.jsonl") if built_in else None


def run(a) -> dict:
    s = {**SETTINGS[a.settings], **{k: v for k, v in vars(a).items() if k in SETTINGS["tiny"] and v is not None}}
    run_dir = Path(a.run_dir)
    recorded = {**vars(a), **s, "input_hashes": check_inputs(a, s)}
    check_settings(run_dir / "settings.json", recorded, ignore=RESTARTABLE, added=ADDED)
    run_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main():
        write_json(run_dir / "settings.json", recorded)
    rank, world_size, device = dist.init_distributed(a.device)
    ranks = dict(rank=rank, world_size=world_size)

    loaded: dict[Path, tuple] = {}  # the one model held for sampling: {directory: (model, tokenizer)}

    def load(model_dir: Path):
        """A model to sample from, loaded once and shared by every step that samples from it (its
        evaluation, then the next iteration's prompts, candidates and judgements). One at a time;
        `unload()` frees it before training, which needs the memory. M0 may keep its tokenizer
        elsewhere (--tokenizer)."""
        model_dir = Path(model_dir)
        if model_dir not in loaded:
            unload()
            loaded[model_dir] = load_for_inference(model_dir, a.tokenizer if model_dir == Path(a.base_model) else None,
                                                   device, chat=a.chat)
        return loaded[model_dir]

    def unload():
        loaded.clear()

    def evaluate(model_dir: Path, name: str) -> dict:
        if a.skip_eval:
            return {}
        out = {}
        if dist.is_main():
            out = evaluate_model(*load(model_dir), name, run_dir / "eval", a.eval_prompts, a.eval_groups,
                                 template=s["judge_template"], max_new_tokens=s["eval_max_new_tokens"],
                                 judge_max_new_tokens=s["judge_max_new_tokens"], score_pattern=a.score_pattern,
                                 own_samples_n=s["eval_own_samples"], temperature=s["response_temperature"],
                                 top_p=s["top_p"], seed=a.seed, more_prompts_file=more_prompts(a),
                                 reply_after=s["judge_reply_after"])
        dist.barrier()
        return out

    # ---- M1: SFT on IFT + EFT ----
    # M0's tokenizer comes from --tokenizer where its directory has none (Meta's download keeps
    # tokenizer.model beside the weights' folder). SFT copies it into M1, so every later model
    # carries its own.
    m1 = run_dir / "m1"
    def sft():
        unload()  # training needs the memory a model held for sampling would take
        train(TrainConfig(stage="sft", init=str(a.base_model), data=[str(a.ift), *map(str, a.eft)], out=str(m1),
                          tokenizer=a.tokenizer, chat=a.chat, lr=s["sft_lr"], min_lr=s["sft_min_lr"], epochs=s["sft_epochs"],
                          batch_size=s["sft_batch_size"], dropout=s["sft_dropout"],
                          group_by_length=s["sft_group_by_length"], device=a.device, seed=a.seed))

    step("SFT (M0 -> M1)", m1 / "metrics.jsonl", sft)
    models = [("m1", m1)]
    results = {"m1": evaluate(m1, "m1")}

    # ---- self-rewarding iterations ----
    current, generated_pools = m1, []
    for t in range(1, a.iterations + 1):
        it = run_dir / f"iter{t}"
        seed = a.seed + t
        prompts, candidates = it / "prompts.jsonl", it / "candidates.jsonl"
        judgements, pairs, next_model = it / "judgements.jsonl", it / "pairs.jsonl", it / "model"
        earlier = None
        if generated_pools:  # every prompt written in earlier iterations, in one file
            earlier = it / "earlier_prompts.jsonl"
            if dist.is_main() and not earlier.exists():
                write_jsonl(earlier, [r for f in generated_pools for r in read_jsonl(f)])
            dist.barrier()
        # Who writes the new prompts: the current model M_t (the method as described, the default),
        # or a fixed model ("base" = M0, or a checkpoint path) that keeps the prompt distribution
        # still across iterations, so that only the answers and judgements change.
        writer = {"current": current, "base": Path(a.base_model)}.get(s["prompt_model"], Path(s["prompt_model"]))

        def self_instruct():
            settings = SelfInstructSettings(
                num_prompts=s["num_prompts"], similarity_threshold=s["similarity_threshold"],
                temperature=s["prompt_temperature"], top_p=s["top_p"], max_new_tokens=s["prompt_max_new_tokens"],
                seed=seed)
            # prompts_summary.json (how many prompts were tried, why the others were rejected) is
            # written just before prompts.jsonl, so a kill cannot leave the step done without it.
            write_prompts(*load(writer), a.seed_prompts, prompts, settings, generated_pool=earlier,
                          model_name=str(writer), summary=it / "prompts_summary.json", **ranks)

        step(f"iteration {t}: self-instruct prompts", prompts, self_instruct)
        generated_pools.append(prompts)
        step(f"iteration {t}: candidates", candidates, lambda: write_candidates(
            *load(current), prompts, candidates, CandidateSettings(
                n=s["n_candidates"], temperature=s["response_temperature"], top_p=s["top_p"],
                max_new_tokens=s["max_new_tokens"], seed=seed), **ranks))
        step(f"iteration {t}: judge + pairs", pairs, lambda: write_pairs(
            *load(current), candidates, judgements, pairs, JudgeSettings(
                k=s["n_judgements"], template=s["judge_template"], score_pattern=a.score_pattern,
                temperature=s["judge_temperature"], top_p=s["top_p"], max_new_tokens=s["judge_max_new_tokens"],
                min_margin=s["min_margin"], seed=seed, reply_after=s["judge_reply_after"]), **ranks))
        n_pairs = len(read_jsonl(pairs)) if pairs.exists() else 0
        if n_pairs == 0:
            log(f"iteration {t}: no preference pairs were built; stopping the loop here")
            break
        def dpo():
            unload()  # M_t is the reference: its log-probs are computed by train() itself
            train(TrainConfig(stage="dpo", init=str(current), data=[str(pairs)], out=str(next_model), chat=a.chat,
                              lr=s["dpo_lr"], min_lr=s["dpo_min_lr"], epochs=s["dpo_epochs"],
                              batch_size=s["dpo_batch_size"], beta=s["beta"], nll_alpha=s["dpo_nll_alpha"],
                              dropout=0.0, device=a.device, seed=seed))

        step(f"iteration {t}: DPO (M{t} -> M{t + 1})", next_model / "metrics.jsonl", dpo)
        name = f"m{t + 1}"
        models.append((name, next_model))
        results[name] = evaluate(next_model, name)
        results[name]["data"] = iteration_data(it, graded=not a.skip_eval)
        current = next_model

    if a.skip_eval or not dist.is_main():
        return results
    eval_dir = run_dir / "eval"
    for i, (name, _) in enumerate(models[1:], start=1):
        prev = models[i - 1][0]
        results[name]["vs_previous"] = head_to_head(load_answers(eval_dir, name), load_answers(eval_dir, prev))
        results[name]["vs_m1"] = head_to_head(load_answers(eval_dir, name), load_answers(eval_dir, "m1"))
    table = results_table(results)
    write_json(run_dir / "results.json", results)
    atomic_write_text(run_dir / "results.md", table + "\n")
    print(table)
    return results


def iteration_data(it: Path, graded: bool = True) -> dict:
    """What an iteration produced: prompts kept, pairs, the judge's score histogram, answer length,
    and (graded=True, part of the evaluation) the pairs as the world's grader sees them."""
    prompts = read_jsonl(it / "prompts.jsonl")
    cands = read_jsonl(it / "candidates.jsonl")
    judged = read_jsonl(it / "judgements.jsonl") if (it / "judgements.jsonl").exists() else []
    pairs = read_jsonl(it / "pairs.jsonl")
    texts = [c for row in cands for c in row["candidates"]]
    hist = {}
    for row in judged:
        m = row.get("mean_score")
        key = "none" if m is None else str(round(m))
        hist[key] = hist.get(key, 0) + 1
    made = json.loads((it / "prompts_summary.json").read_text()) if (it / "prompts_summary.json").exists() else {}
    return {"prompts_kept": len(prompts), "prompts_attempted": made.get("attempts"),
            "prompts_rejected": made.get("rejected"), "candidates": len(texts), "pairs": len(pairs),
            "score_histogram": dict(sorted(hist.items())),
            "mean_response_chars": sum(map(len, texts)) / max(len(texts), 1),
            "pairs_vs_grader": pairs_vs_grader(pairs) if graded else None}


def pairs_vs_grader(pairs: list[dict]) -> dict:
    """What the self-judged pairs hold, checked after the fact by the built-in world's grader (an
    outside check the loop never uses for training): "right_wrong" = the chosen answer is right
    (any style, srlm.world.answer_correct) and the rejected one wrong (what DPO should learn),
    "wrong_right" = the reverse, "both_right" / "both_wrong" = the pair differs in style only (or
    not at all in correctness), "ungraded" = the prompt is not a world task (real data, or a
    self-written prompt that matches no template)."""
    from srlm.world import parse_task, answer_correct

    out = {"right_wrong": 0, "wrong_right": 0, "both_right": 0, "both_wrong": 0, "ungraded": 0}
    for p in pairs:
        task = parse_task(p["prompt"])
        if task is None:
            out["ungraded"] += 1
            continue
        chosen, rejected = answer_correct(task, p["chosen"]), answer_correct(task, p["rejected"])
        out[{(True, False): "right_wrong", (False, True): "wrong_right",
             (True, True): "both_right", (False, False): "both_wrong"}[(chosen, rejected)]] += 1
    return out


def results_table(results: dict) -> str:
    """One markdown table: instruction following, head-to-head, reward modelling and data, per model."""
    def pct(x):
        return "–" if x is None or x != x else f"{100 * x:.1f}%"

    def num(x, f="{:.3f}"):
        return "–" if x is None or x != x else f.format(x)

    def wtl(h):
        return "–" if not h else f"{pct(h['win'])}/{pct(h['tie'])}/{pct(h['loss'])}"

    def kept(d):  # self-instructed prompts kept, of those the model wrote
        if "prompts_kept" not in d:
            return "–"
        return f"{d['prompts_kept']} of {d['prompts_attempted']}" if d.get("prompts_attempted") else str(d["prompts_kept"])

    def by_grader(g):  # the pairs as the grader sees them: right>wrong / wrong>right / both right / both wrong / ungraded
        return "–" if not g else "/".join(str(g[k]) for k in g)

    head = ("| model | answer-correct | answer-correct, more prompts | exact acc | grade (0-5) | W/T/L vs M1 "
            "| judge pairwise acc | judge right>wrong "
            "| judge AUC own samples | sampled answer-correct | judge parse fail | prompts kept | pairs "
            "| pairs R>W/W>R/RR/WW/U | mean answer chars |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        ift, rm, d = r.get("instruction_following", {}), r.get("reward_modelling", {}), r.get("data", {})
        own, more = r.get("own_samples", {}), r.get("instruction_following_more", {})
        lines.append(
            f"| {name.upper()} | {pct(ift.get('answer_correct'))} | {pct(more.get('answer_correct'))} "
            f"| {pct(ift.get('exact_accuracy'))} "
            f"| {num(ift.get('mean_grade'), '{:.2f}')} | {wtl(r.get('vs_m1'))} | {pct(rm.get('pairwise_accuracy'))} "
            f"| {pct(rm.get('right_over_wrong'))} | {num(own.get('auc'))} | {pct(own.get('sampled_answer_correct'))} "
            f"| {pct(rm.get('parse_failure_rate'))} | {kept(d)} | {d.get('pairs', '–')} "
            f"| {by_grader(d.get('pairs_vs_grader'))} | {num(ift.get('mean_response_chars'), '{:.1f}')} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/default", help="where every artifact of the run goes")
    p.add_argument("--base-model", default=str(DATA / "m0"), help="M0: an HF or Meta Llama checkpoint directory")
    p.add_argument("--tokenizer", help="M0's tokenizer.model, if its directory has none (e.g. Meta's download)")
    p.add_argument("--chat", choices=sorted(FORMATS),
                   help="chat format for every step (default: M0's chat template, else llama2)")
    p.add_argument("--ift", default=str(DATA / "ift.jsonl"), help="IFT seed: rows {prompt, response}")
    p.add_argument("--eft", nargs="+", default=[str(DATA / "eft.jsonl"), str(DATA / "eft_checks.jsonl")],
                   help="EFT seed, one or more files: judge prompts with judgements")
    p.add_argument("--seed-prompts", default=str(DATA / "seed_prompts.jsonl"), help="self-instruction seed pool")
    p.add_argument("--eval-prompts", default=str(DATA / "eval_prompts.jsonl"))
    p.add_argument("--eval-prompts-more", default=None,
                   help="a second held-out prompt file, graded on its own (default: data/eval_prompts_more.jsonl "
                        "when --eval-prompts is the built-in one, else none; 'none': skip)")
    p.add_argument("--eval-groups", default=str(DATA / "eval_tellfree.jsonl"),
                   help="held-out judged groups (default: the tell-free ones; data/eval_groups.jsonl has wording tells)")
    p.add_argument("--iterations", type=int, default=2, help="self-rewarding iterations (2 gives M2 and M3)")
    p.add_argument("--settings", choices=sorted(SETTINGS), default=None,
                   help="default hyperparameters: 'tiny' for the built-in M0, else 'paper'")
    for key, value in SETTINGS["tiny"].items():  # every setting can be overridden on its own
        p.add_argument("--" + key.replace("_", "-"), type=type(value), default=None,
                       help=f"{HELP[key]} (tiny {value}, paper {SETTINGS['paper'][key]})")
    p.add_argument("--score-pattern", default=None, help="regex for the judge's score (default: 'Score: N' lines)")
    p.add_argument("--skip-eval", action="store_true", help="run the loop without the evaluations")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.settings is None:
        a.settings = "tiny" if Path(a.base_model).resolve() == (DATA / "m0").resolve() else "paper"
    dist.init_distributed(a.device)
    try:
        return run(a)
    finally:
        dist.cleanup()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    from srlm.cli import run_cli

    run_cli(main, "python -m srlm.loop")
