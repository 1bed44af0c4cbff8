"""Tests for srlm/train_config.py: the stage defaults a TrainConfig fills in, the settings it refuses,
and that train.py has exactly one flag per field.

    python -m pytest -q tests/test_train_config.py
"""
from dataclasses import fields

import pytest

import train
from srlm.train_config import STAGE_DEFAULTS, TrainConfig


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"stage": "sft", "data": ["d.jsonl"], "out": "o", "init": "m0", **kw})


def test_the_papers_schedules_fill_what_is_left_unset():
    sft, dpo = cfg(), cfg(stage="dpo")
    assert (sft.lr, sft.min_lr, sft.dropout, sft.weight_decay) == (5.5e-6, 1.1e-6, 0.1, 0.0)
    assert (dpo.lr, dpo.min_lr, dpo.dropout, dpo.weight_decay) == (1e-6, 1e-7, 0.0, 0.0)
    pre = cfg(stage="pretrain", init=None, model_config="tiny", tokenizer="t.model")
    assert (pre.lr, pre.min_lr, pre.weight_decay) == (3e-4, 3e-5, 0.1)
    assert set(STAGE_DEFAULTS) == {"pretrain", "sft", "dpo"}


def test_a_value_given_is_kept_even_when_it_is_zero():
    c = cfg(lr=1e-3, min_lr=0.0, dropout=0.0, weight_decay=0.05)
    assert (c.lr, c.min_lr, c.dropout, c.weight_decay) == (1e-3, 0.0, 0.0, 0.05)


@pytest.mark.parametrize("kw, message", [
    (dict(stage="rl"), r"--stage must be one of \['dpo', 'pretrain', 'sft'\], got 'rl'"),
    (dict(model_config="tiny"), r"exactly one of --init DIR .* or --model-config"),
    (dict(init=None), r"exactly one of --init DIR .* or --model-config"),
    (dict(init=None, model_config="tiny"), r"--model-config \(fresh weights\) needs --tokenizer"),
    (dict(loss="kto"), r"--loss must be 'dpo' or 'ipo', got 'kto'"),
    (dict(batch_size=0), r"--batch-size and --micro-batch-size must be positive"),
    (dict(micro_batch_size=-1), r"--batch-size and --micro-batch-size must be positive"),
    (dict(save_every=0), r"--save-every must be >= 1"),
    (dict(save_every_minutes=float("nan")), r"--save-every-minutes >= 0"),
    (dict(dtype="fp16"), r"--dtype must be fp32 or bf16, got 'fp16'"),
    (dict(save_dtype="int8"), r"--dtype must be fp32 or bf16, got 'int8'"),
])
def test_bad_settings_are_refused_by_name(kw, message):
    with pytest.raises(ValueError, match=message):
        cfg(**kw)


def test_train_py_has_one_flag_per_field():
    """config_from_args maps flags to fields by name: a field without a flag (or a flag without a
    field) would silently keep its default."""
    parser_dests = {a.dest for a in train.build_parser()._actions} - {"help"}
    names = {f.name for f in fields(TrainConfig)}
    assert parser_dests - {"no_progress"} == names - {"progress"}
    c = train.config_from_args(train.parse_args(["--stage", "dpo", "--data", "p.jsonl", "--out", "o", "--init", "m",
                                                 "--beta", "0.3", "--no-progress", "--save-every", "7"]))
    assert (c.stage, c.data, c.beta, c.progress, c.save_every, c.lr) == ("dpo", ["p.jsonl"], 0.3, False, 7, 1e-6)
