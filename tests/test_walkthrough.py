"""srlm/walkthrough.py: the report's arithmetic on hand-written judgements, and one whole iteration
on the committed base model (data/m0) with small settings."""
import json

import pytest

from srlm import walkthrough
from srlm.walkthrough import main, pick_prompts, unparsed


def test_unparsed_counts_by_hand():
    rows = [{"judgements": ["... Score: 4", "no score here", "Score: 5"], "scores": [4.0, None, 5.0]},
            {"judgements": ["Score: 4", "Score: 10/10", ""], "scores": [4.0, None, None]}]
    assert unparsed(rows) == {"no_room": 1, "unparsed_examples": ["no score here", "Score: 10/10"]}
    assert unparsed([{"judgements": ["Score: 4"], "scores": [4.0]}]) == {"no_room": 0, "unparsed_examples": []}


def test_pick_prompts_from_a_file(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(5)))
    rows, source = pick_prompts(2, str(f))
    assert rows == [{"id": "0", "prompt": "q0"}, {"id": "1", "prompt": "q1"}] and source == str(f)


def test_one_iteration_on_the_base_model(tmp_path):
    """M0 has no judge training: whatever it parses, the files and the report must agree."""
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"What is {i} plus {i}?"}) + "\n" for i in range(2)))
    out = tmp_path / "walk"
    r = main(["--model", "data/m0", "--out", str(out), "--prompts", str(f), "--n", "2", "--k", "1",
              "--max-new-tokens", "8", "--judge-max-new-tokens", "24", "--no-speed"])
    cands = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert [len(c["candidates"]) for c in cands] == [2, 2]
    judged = [json.loads(line) for line in (out / "judgements.jsonl").read_text().splitlines()]
    assert r["judging"]["judgements"] == 4 == len(judged)
    assert r["judging"]["parsed"] == sum(s is not None for j in judged for s in j["scores"])
    pairs = (out / "pairs.jsonl").read_text().splitlines()
    assert r["judging"]["pairs"] == len(pairs)
    if pairs:
        assert r["dpo"]["steps"] == 1 and (out / "dpo" / "config.json").is_file()
    else:
        assert "EFT" in r["dpo"]["skipped"]
    assert json.loads((out / "report.json").read_text())["judging"] == r["judging"]


def test_one_dpo_step_on_the_pairs(tmp_path, monkeypatch):
    """With pairs to train on (here from a stand-in judge that scores the first answer 5 and the
    second 1), the report carries the one DPO step's loss: log 2 at the first step, where the
    policy still equals the reference."""
    import math

    from srlm.io import write_json, write_jsonl

    def judge(model, tok, candidates, judgements, pairs, s):
        rows = [json.loads(line) for line in candidates.read_text().splitlines()]
        write_jsonl(judgements, [{"id": r["id"], "candidate_index": i, "judgements": [f"Score: {5 - 4 * i}"],
                                  "scores": [5.0 - 4 * i]} for r in rows for i in range(2)])
        write_jsonl(pairs, [{"id": r["id"], "prompt": r["prompt"], "chosen": r["candidates"][0] + " yes",
                             "rejected": r["candidates"][1] + " no"} for r in rows])
        stats = {"judgements": 2 * len(rows), "parse_failures": 0, "parse_failure_rate": 0.0,
                 "score_histogram": {"1": len(rows), "5": len(rows)}, "pairs": len(rows)}
        write_json(pairs.parent / "judge_summary.json", stats)
        return stats

    monkeypatch.setattr(walkthrough, "write_pairs", judge)
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"What is {i} plus {i}?"}) + "\n" for i in range(2)))
    r = main(["--model", "data/m0", "--out", str(tmp_path / "walk"), "--prompts", str(f), "--n", "2",
              "--max-new-tokens", "8", "--no-speed"])
    assert r["judging"]["parse_rate"] == 1.0 and r["judging"]["score_histogram"] == {"1": 2, "5": 2}
    assert r["dpo"]["pairs"] == 2 and r["dpo"]["steps"] == 1
    assert r["dpo"]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert r["dpo"]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert (tmp_path / "walk" / "dpo" / "config.json").is_file()
