"""Several seeds of the loop in one table: mean and spread per model, and which gains exceed the spread.

One run of the loop is one draw: its SFT order, prompts and samples depend on --seed. A claim
("instruction following improves M1 -> M3") counts as shown only when the gain is larger than
what changing the seed does. For each metric this prints, per model, mean ± sample standard
deviation over the runs, and the M1 -> last-model gain per run; a gain is called shown when it is
positive in every run and its mean exceeds the seed-to-seed standard deviation of the metric at
both ends (M1 and the last model).

    for s in 0 1 2; do python -m srlm.loop --run-dir runs/seed$s --seed $s; done
    python -m srlm.report runs/seed0 runs/seed1 runs/seed2          # writes nothing, prints markdown
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from srlm.io import DataError

# (label, path into results.json per model, percent?)
METRICS = (
    ("answer-correct", ("instruction_following", "answer_correct"), True),
    ("answer-correct, more prompts", ("instruction_following_more", "answer_correct"), True),
    ("exact acc", ("instruction_following", "exact_accuracy"), True),
    ("exact acc, more prompts", ("instruction_following_more", "exact_accuracy"), True),
    ("grade (0-5)", ("instruction_following", "mean_grade"), False),
    ("judge pairwise acc (tell-free)", ("reward_modelling", "pairwise_accuracy"), True),
    ("judge right>wrong (tell-free)", ("reward_modelling", "right_over_wrong"), True),
    ("judge AUC, own samples", ("own_samples", "auc"), False),
    ("sampled answer-correct", ("own_samples", "sampled_answer_correct"), True),
)
PAIR_KINDS = ("right_wrong", "wrong_right", "both_right", "both_wrong", "ungraded")


def _get(result: dict, path: tuple):
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result if isinstance(result, (int, float)) and not (isinstance(result, float) and math.isnan(result)) else None


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)


def gain_verdict(first: list[float], last: list[float]) -> dict:
    """Per-run gains last - first; shown = every gain > 0 and mean gain > the seed spread at both ends."""
    gains = [b - a for a, b in zip(first, last)]
    mean, std = mean_std(gains)
    spread = max(mean_std(first)[1], mean_std(last)[1])
    return {"gains": gains, "mean": mean, "std": std, "spread": spread,
            "shown": len(gains) > 1 and min(gains) > 0 and mean > spread}


def load_runs(run_dirs: list[Path]) -> list[dict]:
    """Each run's results.json ({model name: results}), checked; a bad one is a DataError naming it."""
    runs = []
    for d in run_dirs:
        f = Path(d) / "results.json"
        if not f.is_file():
            raise DataError(f"{f}: no results.json (has the loop finished in {d}?)")
        try:
            result = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{f}: malformed JSON ({e})") from None
        if not isinstance(result, dict) or not result:
            raise DataError(f"{f}: expected a JSON object of results per model (written by python -m srlm.loop)")
        for name, value in result.items():
            if not isinstance(value, dict):
                raise DataError(f"{f}: key {name!r} must be an object of results, got {type(value).__name__}")
        runs.append(result)
    if not [m for m in runs[0] if all(m in r for r in runs)]:
        raise DataError(f"no model is in every run's results.json ({', '.join(map(str, run_dirs))})")
    return runs


def seeds_table(runs: list[dict]) -> str:
    models = [m for m in runs[0] if all(m in r for r in runs)]
    first, last = models[0], models[-1]

    def fmt(v, percent):
        return f"{100 * v:.1f}" if percent else f"{v:.3f}"

    head = "| metric | " + " | ".join(m.upper() for m in models) + f" | gain {first.upper()} → {last.upper()} per seed | shown |"
    lines = [f"{len(runs)} seeds; mean ± standard deviation (percentages in points)", "", head,
             "|" + "---|" * (len(models) + 3)]
    for label, path, percent in METRICS:
        per_model = {m: [_get(r[m], path) for r in runs] for m in models}
        cells = []
        for m in models:
            vals = [v for v in per_model[m] if v is not None]
            if len(vals) < len(runs):
                cells.append("–")
                continue
            mean, std = mean_std(vals)
            cells.append(f"{fmt(mean, percent)} ± {fmt(std, percent)}")
        a, b = per_model[first], per_model[last]
        if None in a or None in b:
            lines.append(f"| {label} | " + " | ".join(cells) + " | – | – |")
            continue
        v = gain_verdict(a, b)
        gains = ", ".join(("+" if g >= 0 else "") + fmt(g, percent) for g in v["gains"])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {gains} | {'yes' if v['shown'] else 'no'} |")
    # what the self-made pairs held, per iteration, summed over seeds
    lines += ["", "| pairs (summed over seeds) | " + " | ".join(PAIR_KINDS) + " |", "|---|" + "---|" * len(PAIR_KINDS)]
    for m in models[1:]:
        counts = {k: sum((r[m].get("data", {}).get("pairs_vs_grader") or {}).get(k, 0) for r in runs) for k in PAIR_KINDS}
        lines.append(f"| into {m.upper()} | " + " | ".join(str(counts[k]) for k in PAIR_KINDS) + " |")
    return "\n".join(lines)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", type=Path, help="finished loop run directories (one per seed)")
    a = p.parse_args(argv)
    table = seeds_table(load_runs(a.run_dirs))
    print(table)
    return table


if __name__ == "__main__":
    from srlm.cli import run_cli

    run_cli(main, "python -m srlm.report")  # bad input: one line naming the file, exit 2
