"""srlm/walkthrough.py: the report's arithmetic on hand-written judgements, and one whole iteration
on the committed base model (data/m0) with small settings."""
import json

from srlm.walkthrough import judge_report, main, pick_prompts


def test_judge_report_counts_by_hand():
    rows = [{"judgements": ["... Score: 4", "no score here", "Score: 5"], "scores": [4.0, None, 5.0]},
            {"judgements": ["Score: 4", "Score: 10/10", ""], "scores": [4.0, None, None]}]
    r = judge_report(rows)
    assert (r["judgements"], r["parsed"], r["no_room"]) == (6, 3, 1)
    assert r["parse_rate"] == 3 / 6
    assert r["score_histogram"] == {"4": 2, "5": 1}
    assert r["unparsed_examples"] == ["no score here", "Score: 10/10"]


def test_judge_report_nothing_parsed():
    r = judge_report([{"judgements": ["Score: 10/10"], "scores": [None]}])
    assert r["parse_rate"] == 0.0 and r["score_histogram"] == {}


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
