"""Tiny random pipelines shaped like Stable Diffusion and DeepFloyd IF stage I, built offline.

Tests and benchmarks save them with diffusers' ``save_pretrained`` so the real loading path
(``load_prior(folder, ...)``) reads them exactly as it reads a downloaded model. Nothing is
downloaded: the tokenizers' vocabularies are written here. Weights are random (seeded), so
the images they "predict" are noise; what they prove is shapes, plumbing and the maths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

# A small closed word list: enough for every test prompt to tokenise to whole words.
WORDS = (
    "a an the of on in with and photo render dslr 3d model view front side back overhead "
    "red green blue yellow white black small large chair table lamp cup car hamburger squirrel "
    "wooden metal shiny bad blurry ugly low quality"
).split()


@dataclass
class TinySizes:
    """Sizes of the tiny networks; the defaults keep one SDS step well under a second on CPU."""

    image_size: int = 64  # SD: VAE input (latents are image_size / 8); IF: the pixel resolution
    text_width: int = 32
    unet_channels: tuple[int, int] = (32, 64)
    seed: int = 0
    prediction_type: str = "epsilon"  # "v_prediction" mimics SD 2.x 768 checkpoints


def byte_symbols() -> dict[int, str]:
    """Byte -> printable character, the reversible table byte-level BPE vocabularies use.

    Printable Latin-1 bytes map to themselves; the rest are shifted past 255 so that no byte
    becomes whitespace or a control character inside a token string.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clip_vocabulary() -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE vocabulary and merge list in CLIP's format (``</w>`` ends a word)."""
    symbols = list(byte_symbols().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols)]
    merges: list[str] = []
    for word in WORDS:  # merge each word left to right so it becomes one token
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merge = f"{pieces[0]} {pieces[1]}"
            joined = pieces[0] + pieces[1]
            if merge not in merges:
                merges.append(merge)
                if joined not in tokens:
                    tokens.append(joined)
            pieces = [joined, *pieces[2:]]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}, merges


def write_clip_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """vocab.json and merges.txt for a tiny CLIP tokenizer, in the files' usual formats."""
    import json

    vocab, merges = clip_vocabulary()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder / "vocab.json", folder / "merges.txt"


def tiny_clip_tokenizer(work: Path):  # noqa: ANN201 (transformers type)
    from transformers import CLIPTokenizer

    vocab_file, merges_file = write_clip_tokenizer_files(work)
    return CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=77)


# Letters, digits and punctuation every tiny T5 vocabulary has as pieces, so unknown words
# still encode (letter by letter) instead of collapsing to <unk>.
T5_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789,.-'"
T5_EXTRA_IDS = 4  # sentinels after the pieces, as T5's 100 <extra_id_N> follow its 32000


def tiny_spiece_model(vocab_size: int = 128, seed: int = 0) -> bytes:
    """A unigram sentencepiece model in T5's layout (pad 0, eos 1, unk 2, no bos) trained offline
    on shuffled ``WORDS``: every word is one piece, everything else falls back to characters.

    One training thread on a seeded corpus makes the bytes the same on every run.
    """
    import io
    import random

    import sentencepiece as spm

    rng = random.Random(seed)
    lines = [" ".join(rng.sample(WORDS, len(WORDS))) for _ in range(200)]
    lines.append(" ".join(T5_CHARACTERS))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="unigram", vocab_size=vocab_size,
        hard_vocab_limit=False,  # the corpus has fewer candidate pieces than vocab_size: take them all
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        split_by_number=False,  # keep "3d" one piece
        num_threads=1, minloglevel=2,
    )
    return model.getvalue()


def write_t5_tokenizer_files(folder: Path, spiece_model: bytes, extra_ids: int = T5_EXTRA_IDS) -> Path:
    """The files of a hub IF ``tokenizer/`` folder: ``spiece.model`` and its two JSON configs (no
    tokenizer.json), so loading takes the path a real download takes."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(spiece_model)
    specials = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                "additional_special_tokens": [f"<extra_id_{i}>" for i in range(extra_ids)]}
    config = {**specials, "extra_ids": extra_ids, "model_max_length": 77, "sp_model_kwargs": {},
              "tokenizer_class": "T5Tokenizer"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def tiny_t5_tokenizer(spiece_model: bytes | None = None, extra_ids: int = T5_EXTRA_IDS):  # noqa: ANN201 (transformers type)
    """transformers' (fast, Unigram) T5 tokenizer over the pieces and scores of ``spiece_model``:
    the twin of what ``T5SentencePieceTokenizer`` reads from the same file, built without protobuf."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    sp = spm.SentencePieceProcessor(model_proto=spiece_model or tiny_spiece_model())
    pieces = [(sp.id_to_piece(i), float(sp.get_score(i))) for i in range(sp.get_piece_size())]
    return T5Tokenizer(vocab=pieces, extra_ids=extra_ids, model_max_length=77)


def build_tiny_sd(folder: Path | str, sizes: TinySizes | None = None) -> Path:
    """Write a random SD-shaped pipeline (UNet, VAE with 8x downsampling, CLIP text encoder) to ``folder``."""
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    sizes = sizes or TinySizes()
    folder = Path(folder)
    torch.manual_seed(sizes.seed)
    tokenizer = tiny_clip_tokenizer(folder / ".tokenizer-src")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=sizes.text_width, intermediate_size=2 * sizes.text_width,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=sizes.image_size,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8, scaling_factor=0.18215,
    )
    unet = UNet2DConditionModel(
        sample_size=sizes.image_size // 8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=sizes.unet_channels, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=sizes.text_width,
        attention_head_dim=8, norm_num_groups=16,
    )
    # SD repositories ship a PNDM scheduler config; the prior reads alphas_cumprod from it.
    scheduler = PNDMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, prediction_type=sizes.prediction_type,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    # Hub SD repositories carry vocab.json + merges.txt (no tokenizer.json): keep that layout so
    # the loader is exercised on the files a real download has.
    for name in ("vocab.json", "merges.txt"):
        (folder / ".tokenizer-src" / name).replace(folder / "tokenizer" / name)
    (folder / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    _remove_tree(folder / ".tokenizer-src")
    return folder


def build_tiny_if(folder: Path | str, sizes: TinySizes | None = None) -> Path:
    """Write a random IF-stage-I-shaped pipeline (pixel UNet with learned variance, T5 encoder) to ``folder``."""
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    sizes = sizes or TinySizes(image_size=16)
    folder = Path(folder)
    torch.manual_seed(sizes.seed)
    spiece = tiny_spiece_model()
    # Only saved for model_index.json's ["transformers", "T5Tokenizer"] entry; its files are
    # replaced below by the hub's layout.
    tokenizer = tiny_t5_tokenizer(spiece)
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer),  # sentencepiece pieces plus the sentinels after them
        d_model=sizes.text_width, d_kv=8, d_ff=2 * sizes.text_width, num_layers=2,
        num_heads=4, relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
    ))
    # IF's UNet: pixels in, eps and a variance interpolation out (6 channels), T5 features
    # projected to the cross-attention width and pooled into the time embedding.
    unet = UNet2DConditionModel(
        sample_size=sizes.image_size, in_channels=3, out_channels=6, layers_per_block=1,
        block_out_channels=sizes.unet_channels,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=sizes.unet_channels[0],
        encoder_hid_dim=sizes.text_width, encoder_hid_dim_type="text_proj", addition_embed_type="text",
        addition_embed_type_num_heads=2, attention_head_dim=8, norm_num_groups=16, resnet_time_scale_shift="scale_shift",
        only_cross_attention=False,
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
        thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5, clip_sample=True,
    )
    pipe = IFPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    # Hub IF repositories carry spiece.model + JSON configs (no tokenizer.json): keep that layout.
    _remove_tree(folder / "tokenizer")
    write_t5_tokenizer_files(folder / "tokenizer", spiece)
    return folder


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
