"""The tiny pipeline builders and scripts/make_tiny_prior.py: diffusers layout, offline tokenizers, refusals."""

from __future__ import annotations

import json

from magic3d.guidance import PriorConfig, check_prior_available
from magic3d.guidance.hub import family_of
from magic3d.guidance.tiny import WORDS, byte_symbols, clip_vocabulary, tiny_t5_tokenizer


def test_byte_table_is_a_printable_bijection():
    table = byte_symbols()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert all(not ch.isspace() and ch.isprintable() for ch in table.values())
    assert table[ord("a")] == "a"


def test_clip_vocabulary_makes_every_word_one_token():
    vocab, merges = clip_vocabulary()
    assert all(w + "</w>" in vocab for w in WORDS)
    assert len(set(vocab.values())) == len(vocab) and max(vocab.values()) == len(vocab) - 1
    assert all(len(m.split(" ")) == 2 for m in merges)


def test_t5_tokenizer_is_built_offline_and_ends_with_eos():
    tok = tiny_t5_tokenizer()
    ids = tok("a red chair").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["▁a", "▁red", "▁chair", "</s>"]


def test_script_writes_loadable_folders_and_refuses_non_empty_ones(tmp_path, capsys, load_script):
    script = load_script("make_tiny_prior")
    assert script.main([str(tmp_path / "sd")]) == 0
    assert script.main([str(tmp_path / "if"), "--if"]) == 0
    for name, family in (("sd", "sd"), ("if", "if")):
        folder = tmp_path / name
        assert json.loads((folder / "model_index.json").read_text())["unet"] == ["diffusers", "UNet2DConditionModel"]
        assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
        assert family_of(folder, name) == family
        check_prior_available(str(folder), PriorConfig())
    assert script.main([str(tmp_path / "sd")]) == 2
    assert "not empty" in capsys.readouterr().err
