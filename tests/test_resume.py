"""Tests for srlm/resume.py: the resumable training state (weights, optimizer, step, RNG) saved and
restored exactly, the settings a resume must keep, when a save is due, and what --out may hold.

    python -m pytest -q tests/test_resume.py
"""
import json

import pytest
import torch

from conftest import small_tokenizer
from srlm import resume
from srlm.checkpoint import load_model
from srlm.io import DataError, write_jsonl
from srlm.logprobs import LogprobModel
from srlm.model import Llama, ModelArgs
from srlm.resume import (check_out_dir, check_resume_config, finished_summary, load_training_state, save_due,
                         save_training_state)
from srlm.train_config import TrainConfig, TrainingError

CPU = torch.device("cpu")


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"stage": "sft", "data": ["d.jsonl"], "out": "o", "init": "m0", "seed": 3, **kw})


def trained(seed=0):
    """A micro model and its AdamW after two steps (so the optimizer state is not all zeros)."""
    torch.manual_seed(seed)
    wrapped = LogprobModel(Llama(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=640, multiple_of=16,
                                           max_seq_len=32)), impl="torch")
    opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-2)
    tokens, mask = torch.randint(0, 640, (2, 8)), torch.ones(2, 8, dtype=torch.long)
    for _ in range(2):
        (-wrapped(tokens, mask).sum()).backward()
        opt.step()
        opt.zero_grad()
    return wrapped, opt


def test_saved_state_restores_weights_optimizer_step_and_rng(tmp_path):
    wrapped, opt = trained()
    ckpt = tmp_path / "run.train" / "checkpoint"
    torch.manual_seed(123)
    save_training_state(ckpt, wrapped, opt, 7, cfg(), str(small_tokenizer()), CPU)
    after_save = torch.rand(3)                    # what the uninterrupted run draws next
    assert sorted(p.name for p in ckpt.iterdir()) == ["model", "optimizer.pt", "trainer.pt"]

    fresh, fresh_opt = trained(seed=1)            # other weights and moments, and another RNG state
    fresh.model.load_state_dict(load_model(ckpt / "model").state_dict())  # train() loads the weights with the model
    assert load_training_state(ckpt, fresh, fresh_opt, CPU) == 7
    assert torch.equal(torch.rand(3), after_save)
    for p, q in zip(wrapped.parameters(), fresh.parameters()):
        assert torch.equal(p, q)
    for (a, b) in zip(opt.state.values(), fresh_opt.state.values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
        assert float(a["step"]) == float(b["step"]) == 2.0


def test_a_second_save_replaces_the_first_whole(tmp_path):
    wrapped, opt = trained()
    ckpt = tmp_path / "checkpoint"
    save_training_state(ckpt, wrapped, opt, 1, cfg(), str(small_tokenizer()), CPU)
    save_training_state(ckpt, wrapped, opt, 2, cfg(), str(small_tokenizer()), CPU)
    assert torch.load(ckpt / "trainer.pt", weights_only=True)["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]   # no temporary or old folder left


def test_resume_refuses_other_settings_naming_each(tmp_path):
    wrapped, opt = trained()
    save_training_state(tmp_path / "c", wrapped, opt, 1, cfg(), str(small_tokenizer()), CPU)
    check_resume_config(tmp_path / "c", cfg(device="cuda", save_every=5, progress=False))  # how, not what: fine
    with pytest.raises(TrainingError, match=r"other settings \(lr: saved 5\.5e-06, now 0\.001; seed: saved 3, now 4\)"):
        check_resume_config(tmp_path / "c", cfg(lr=1e-3, seed=4))


def test_save_due_after_the_minutes_and_never_at_zero(monkeypatch):
    monkeypatch.setattr(resume.time, "time", lambda: 1000.0)
    assert save_due(1000.0 - 5 * 60, 5, CPU) and save_due(1000.0 - 301, 5, CPU)
    assert not save_due(1000.0 - 299, 5, CPU)
    assert not save_due(0.0, 0, CPU)              # 0 minutes: saving by steps only


def test_out_dir_may_hold_only_what_train_writes(tmp_path):
    check_out_dir(tmp_path / "new")               # not there yet: fine
    out = tmp_path / "m1"
    out.mkdir()
    check_out_dir(out)                            # empty: fine
    for name in ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                 "model-00001-of-00002.safetensors", "tokenizer.model", "metrics.jsonl"):
        (out / name).write_text("x")
    check_out_dir(out)                            # an earlier save of train.py: fine
    for name in ("notes.txt", "a.bin", "b.bin", "c.bin"):
        (out / name).write_text("mine")
    with pytest.raises(DataError, match=r"m1: --out holds files train.py did not write \(a\.bin, b\.bin, c\.bin, \.\.\.\)"):
        check_out_dir(out)
    with pytest.raises(DataError, match=r"--out must be a folder"):
        check_out_dir(out / "notes.txt")


def test_finished_summary_is_the_last_line_of_a_complete_save(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    write_jsonl(out / "metrics.jsonl", [{"step": 1}, {"summary": True, "steps": 1}])
    assert finished_summary(out) is None          # no config.json: the save did not finish
    (out / "config.json").write_text(json.dumps({}))
    assert finished_summary(out) == {"summary": True, "steps": 1}
    write_jsonl(out / "metrics.jsonl", [{"step": 1}, {"step": 2}])
    assert finished_summary(out) is None          # still training
    (out / "metrics.jsonl").write_text('{"step": 1}\n{"summary": tr')  # a torn last line
    assert finished_summary(out) is None
