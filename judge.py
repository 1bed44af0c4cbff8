"""The model judges its own candidates, from the command line: candidates.jsonl -> judgements.jsonl -> pairs.jsonl.

Each candidate answer is put in the judge prompt (srlm/judge.py, the paper's additive 5-point
rubric) and judged K times by sampling; the parsed scores are averaged (candidates with fewer
than --min-valid parsed judgements are dropped); per prompt, the best-scored candidate becomes
"chosen" and the worst "rejected" (ties give no pair). Outputs:

    judgements.jsonl  one line per (prompt id, candidate index):
                      {"id", "candidate_index", "judgements": [raw text x K],
                       "scores": [float | None x K], "mean_score"}
    pairs.jsonl       {"id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score"}
    judge_summary.json  parse-failure rate, pairs built, score histogram

Defaults: K = 3 judgements as in the paper, sampled at temperature 0.7 and top-p 0.9 (the
paper's sampling settings for answers; averaging K samples only reduces noise when the samples
differ, so greedy decoding would make K > 1 pointless), --min-valid 1 (the paper drops only the
judgements that do not parse).

Resumable: work is cut into chunks of --chunk-size candidates; each finished chunk is appended to
`<judgements>.partial` (`.partial.rank{r}` under torchrun); a rerun skips what is there (and a
finished judgements.jsonl) and only rebuilds the pairs. Chunk c is sampled with seed + c, so a chunk redone after a kill gives
the same texts. Under torchrun, chunks are shared round-robin over the ranks; rank 0 merges.

    python judge.py --model runs/default/m1 --input iter1/candidates.jsonl \\
        [--judgements iter1/judgements.jsonl --pairs iter1/pairs.jsonl] [--k 3] [--template compact]
    torchrun --nproc_per_node 8 judge.py --model ... --input ...

Reward-model evaluation (the paper's table): judge every reply of human-ranked groups
({"prompt", "replies", "ranks"}, e.g. from `python -m srlm.oasst`) and compare with the ranks:

    python judge.py --eval --model runs/default/m1 --input out/oasst/eval_groups.jsonl

The work is done by srlm/pairs.py (the judge prompt and score parser: srlm/judge.py); this file
only turns flags into its settings. Tests: `python -m pytest -q tests/test_judge_cli.py`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from srlm import dist
from srlm.chat import FORMATS
from srlm.io import DataError
from srlm.loading import DTYPES, load_for_inference
from srlm.metrics import format_metrics
from srlm.pairs import JudgeSettings, judge_groups, load_candidates, load_groups, write_pairs


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF-format checkpoint dir (with tokenizer.model or tokenizer.json)")
    ap.add_argument("--chat", choices=sorted(FORMATS),
                    help="chat format (default: the checkpoint's chat template, else llama2)")
    ap.add_argument("--input", "--candidates", dest="input", required=True,
                    help="candidates.jsonl (or ranked groups with --eval)")
    ap.add_argument("--judgements", help="default: judgements.jsonl (eval_judgements.jsonl) next to --input")
    ap.add_argument("--pairs", help="default: pairs.jsonl next to --input")
    ap.add_argument("--summary", help="default: judge_summary.json next to --pairs")
    ap.add_argument("--eval", action="store_true", help="reward-model metrics on ranked groups")
    ap.add_argument("--metrics", help="--eval output, default: eval_metrics.json next to --input")
    ap.add_argument("--k", "--num-judgements", dest="k", type=int, default=3,
                    help="judgements per candidate (paper: 3)")
    ap.add_argument("--min-valid", type=int, default=1, help="parsed judgements a candidate needs")
    ap.add_argument("--min-margin", type=float, default=0.0,
                    help="smallest chosen - rejected score gap that makes a pair (0: any preference)")
    ap.add_argument("--template", default="default", help="'default', 'compact' or a template file")
    ap.add_argument("--reply-after", default="", help="show the judge only the text after the last such marker "
                                                      "of a candidate, e.g. 'That gives ' (default: all of it)")
    ap.add_argument("--score-pattern", default=None, help="regex with a (?P<score>...) group")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64, help="rows per forward pass")
    ap.add_argument("--chunk-size", type=int, default=64, help="candidates per resumable chunk")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace outputs even with fewer rows than they hold (judgements still resume by input_hash)")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="default: bfloat16 on GPU, float32 on CPU (as generate.py)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    a = parse_args(argv)
    inp = Path(a.input)
    s = JudgeSettings(k=a.k, min_valid=a.min_valid, min_margin=a.min_margin, template=a.template,
                      score_pattern=a.score_pattern,
                      temperature=a.temperature, top_p=a.top_p, max_new_tokens=a.max_new_tokens,
                      batch_size=a.batch_size, chunk_size=a.chunk_size, seed=a.seed, reply_after=a.reply_after)
    s.check()                                             # bad inputs fail before the model loads
    load_groups(inp) if a.eval else load_candidates(inp)
    judgements = Path(a.judgements or inp.parent / ("eval_judgements.jsonl" if a.eval else "judgements.jsonl"))
    for flag, path in (("--judgements", judgements), ("--pairs", a.pairs), ("--summary", a.summary),
                       ("--metrics", a.metrics)):
        if path is not None and Path(path).is_dir():
            raise DataError(f"{path}: {flag} must be a file, this is a folder")
    rank, world_size, device = dist.init_distributed(a.device)
    model, tokenizer = load_for_inference(a.model, device=device, dtype=DTYPES[a.dtype] if a.dtype else None, chat=a.chat)
    if a.eval:
        metrics = judge_groups(model, tokenizer, inp, judgements, Path(a.metrics or inp.parent / "eval_metrics.json"),
                               s, overwrite=a.overwrite, rank=rank, world_size=world_size)
        if metrics is not None:
            print(format_metrics(metrics, title=Path(a.model).name))
        return metrics
    pairs = Path(a.pairs or inp.parent / "pairs.jsonl")
    summary = write_pairs(model, tokenizer, inp, judgements, pairs, s, summary=a.summary, overwrite=a.overwrite,
                          rank=rank, world_size=world_size)
    if summary is not None:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    from srlm.cli import run_cli

    run_cli(main, "judge.py")  # bad input: one line naming file, line and key; exit 2 (--debug: traceback)
