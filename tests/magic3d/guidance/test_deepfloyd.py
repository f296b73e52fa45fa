"""DeepFloyd IF's T5 tokenizer as the hub ships it (``spiece.model`` + JSON configs), its 77-token
limit, and what a user sees when sentencepiece is missing."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from transformers import T5Config

from magic3d.errors import PriorError
from magic3d.guidance import PriorConfig, load_prior
from magic3d.guidance.deepfloyd import DeepFloydPrior
from magic3d.guidance.t5_tokenizer import T5_DEFAULT_MAX_LENGTH, T5SentencePieceTokenizer
from magic3d.guidance.tiny import T5_EXTRA_IDS, WORDS, tiny_spiece_model, tiny_t5_tokenizer

PROMPTS = [
    "a red chair",
    "a photo of a small wooden table, front view",
    "a shiny metal hamburger on the table, overhead view",
    "zebra 42 x-ray's",  # unknown words fall back to letters; "'" and digits are pieces too
    "  two   spaces\tand a tab  ",  # sentencepiece's normaliser collapses whitespace
    "",
]


def copy_if(tiny_if_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_if_dir, tmp_path / "if"))


def sp_ids(folder: Path, text: str) -> list[int]:
    """The ids the sentencepiece library itself gives, plus T5's </s> (id 1)."""
    return spm.SentencePieceProcessor(model_file=str(folder / "tokenizer" / "spiece.model")).encode(text) + [1]


def test_hub_layout_loads_through_the_real_path_with_sentencepiece_ids(tiny_if_dir):
    tokenizer_files = sorted(p.name for p in (tiny_if_dir / "tokenizer").iterdir())
    assert tokenizer_files == ["special_tokens_map.json", "spiece.model", "tokenizer_config.json"]
    prior = load_prior(str(tiny_if_dir), PriorConfig(), torch.device("cpu"))
    assert isinstance(prior, DeepFloydPrior)
    assert isinstance(prior.tokenizer, T5SentencePieceTokenizer)
    tok = prior.tokenizer
    assert len(tok) == T5Config.from_pretrained(tiny_if_dir / "text_encoder").vocab_size  # the encoder covers every id
    assert len(tok) == tok.sp.get_piece_size() + T5_EXTRA_IDS
    for text in PROMPTS:
        assert tok(text).input_ids == sp_ids(tiny_if_dir, text), text
    batch = tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert batch.input_ids.dtype == torch.long and batch.input_ids.shape == (len(PROMPTS), 77)
    for row, mask, text in zip(batch.input_ids, batch.attention_mask, PROMPTS, strict=True):
        want = sp_ids(tiny_if_dir, text)
        assert row[: len(want)].tolist() == want and set(row[len(want):].tolist()) <= {0}  # <pad> is 0
        assert mask.tolist() == [1] * len(want) + [0] * (77 - len(want))
    emb = prior.encode_prompt(["a red chair"], [""])
    assert emb.cond.shape == emb.uncond.shape == (1, 77, 32)


def test_every_tiny_word_is_one_piece_and_ids_match_transformers_twin():
    model = tiny_spiece_model()
    assert model == tiny_spiece_model()  # trained deterministically
    ours = T5SentencePieceTokenizer(model_proto=model)
    for word in WORDS:
        assert ours.convert_ids_to_tokens(ours(word).input_ids) == ["▁" + word, "</s>"]
    # transformers' Unigram T5 tokenizer over the same pieces and scores segments ASCII prompts alike.
    twin = tiny_t5_tokenizer(model)
    for text in PROMPTS[:4]:
        assert ours(text).input_ids == twin(text).input_ids, text


def test_truncation_keeps_eos_and_padding_choices():
    tok = T5SentencePieceTokenizer(model_proto=tiny_spiece_model(), model_max_length=77)
    long = " ".join(WORDS * 3)
    full = tok(long).input_ids
    assert len(full) == 3 * len(WORDS) + 1 > 77
    cut = tok(long, truncation=True, max_length=77).input_ids
    assert cut == full[:76] + [tok.eos_token_id]
    longest = tok(["a cup", "a red chair"], padding=True, return_tensors="pt")
    assert longest.input_ids.shape == (2, 4) and longest.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    with pytest.raises(ValueError, match="padding"):
        tok(["a cup", "a red chair"], return_tensors="pt")
    assert tok("a cup", add_special_tokens=False).input_ids == tok.sp.encode("a cup")


def test_if_reads_77_tokens_even_without_model_max_length(tiny_if_dir, tmp_path):
    folder = copy_if(tiny_if_dir, tmp_path)
    config_file = folder / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    del config["model_max_length"]
    config_file.write_text(json.dumps(config))
    prior = load_prior(str(folder), PriorConfig(), torch.device("cpu"))
    assert prior.tokenizer.model_max_length == T5_DEFAULT_MAX_LENGTH
    assert prior.max_text_length == 77
    long = " ".join(WORDS * 3)  # 124 tokens with </s>
    with pytest.warns(UserWarning, match=r"124 tokens long .* reads only 77; its last 47 tokens"):
        emb = prior.encode_prompt([long], [""])
    assert emb.cond.shape == (1, 77, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prior.encode_prompt(["a red chair, front view"], [""])


def test_sd_reads_clip_length_and_77_when_the_config_lacks_it(tiny_sd_dir, tmp_path):
    folder = Path(shutil.copytree(tiny_sd_dir, tmp_path / "sd"))
    assert load_prior(str(folder), PriorConfig(), torch.device("cpu")).max_text_length == 77
    config_file = folder / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("model_max_length", None)
    config_file.write_text(json.dumps(config))
    prior = load_prior(str(folder), PriorConfig(), torch.device("cpu"))
    assert prior.tokenizer.model_max_length > 10**6  # transformers' "no limit" sentinel
    assert prior.max_text_length == 77
    assert prior.encode_prompt(["a cup"], [""]).cond.shape[1] == 77


def test_missing_sentencepiece_names_the_package(tiny_if_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # makes `import sentencepiece` raise ImportError
    with pytest.raises(PriorError) as err:
        load_prior(str(tiny_if_dir), PriorConfig(), torch.device("cpu"))
    message = str(err.value)
    assert "pip install sentencepiece" in message and str(tiny_if_dir) in message
    assert "\n" not in message and "re-download" not in message
    with pytest.raises(PriorError, match="pip install sentencepiece"):
        T5SentencePieceTokenizer.from_pretrained(tiny_if_dir / "tokenizer")


def test_a_tokenizer_json_loads_transformers_fast_tokenizer_without_sentencepiece(tiny_if_dir, tmp_path, monkeypatch):
    folder = copy_if(tiny_if_dir, tmp_path)
    want = {text: sp_ids(folder, text) for text in PROMPTS[:4]}
    shutil.rmtree(folder / "tokenizer")
    tiny_t5_tokenizer((tiny_if_dir / "tokenizer" / "spiece.model").read_bytes()).save_pretrained(folder / "tokenizer")
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    prior = load_prior(str(folder), PriorConfig(), torch.device("cpu"))
    assert not isinstance(prior.tokenizer, T5SentencePieceTokenizer)
    for text, ids in want.items():
        assert prior.tokenizer(text).input_ids == ids, text
    assert prior.encode_prompt(["a red chair"], [""]).cond.shape == (1, 77, 32)


def test_a_tokenizer_folder_without_its_model_says_re_download(tiny_if_dir, tmp_path):
    folder = copy_if(tiny_if_dir, tmp_path)
    (folder / "tokenizer" / "spiece.model").unlink()
    with pytest.raises(PriorError, match="tokenizer of prior .* could not be loaded"):
        load_prior(str(folder), PriorConfig(), torch.device("cpu"))


def test_magic3d_generate_runs_coarse_steps_on_the_hub_layout(tiny_if_dir, tmp_path, capsys, monkeypatch):
    """The CLI as a user runs it, on an IF folder whose tokenizer is only spiece.model."""
    from magic3d import cli

    out = tmp_path / "out"
    argv = ["magic3d", "generate", "a red chair", "--prior", str(tiny_if_dir), "--preset", "fast", "--out", str(out),
            "--device", "cpu", "--quiet", "--set", "coarse.steps=3", "--set", "coarse.resolution=32",
            "--set", "fine.steps=0", "--set", "fine.tet_resolution=32", "--set", "export.formats=[obj]",
            "--set", "export.preview=false", "--set", "bake.texture_size=64"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 0, capsys.readouterr().err
    record = json.loads((out / "a-red-chair" / "run.json").read_text())
    assert record["status"] == "done" and record["metrics"]["coarse"]["loss"] > 0
    assert (out / "a-red-chair" / "checkpoints" / "coarse-000003.safetensors").is_file()
    assert (out / "a-red-chair" / "asset.obj").stat().st_size > 0
