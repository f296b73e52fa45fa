"""T5's tokenizer read from ``spiece.model`` by the sentencepiece library alone.

Hub DeepFloyd IF repositories ship their T5 tokenizer as ``spiece.model`` plus two JSON configs,
with no ``tokenizer.json``. transformers turns such a folder into a fast tokenizer by parsing
the model's protobuf, which needs a newer protobuf than the 3.20 that nerfstudio pins, so that
path fails on this project's dependencies. sentencepiece reads the file itself: this class
does what the priors ask of a tokenizer (ids, padding mask, truncation) with T5's conventions:
nothing prepended, ``</s>`` appended, ``<pad>`` on the right.

Unlike transformers, text is not split around special-token strings such as ``<extra_id_0>``
or ``</s>`` typed into a prompt; they are encoded as plain text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from magic3d.errors import PriorError

# T5 was pre-trained on 512-token inputs; used only when a tokenizer config names no length.
T5_DEFAULT_MAX_LENGTH = 512
# transformers writes ``int(1e30)`` for "no limit"; anything this large is not a real length.
NO_LIMIT = 1_000_000


def import_sentencepiece(what: str) -> ModuleType:
    """The sentencepiece module, or PriorError naming the package ``what`` needs."""
    try:
        import sentencepiece
    except ImportError:
        raise PriorError(
            f"The T5 tokenizer of {what} is a sentencepiece model; install it with `pip install sentencepiece` "
            "and run again."
        ) from None
    return sentencepiece


@dataclass
class TokenBatch:
    """A call's result, as transformers' ``BatchEncoding`` offers it: "B L" LongTensors with
    ``return_tensors="pt"``, else lists of ids (one flat list for a single text)."""

    input_ids: Int[Tensor, "B L"] | list[list[int]] | list[int]
    attention_mask: Int[Tensor, "B L"] | list[list[int]] | list[int]


class T5SentencePieceTokenizer:
    """T5 tokenization of prompts: ``sp.encode(text) + [eos]``, truncated and padded on request."""

    def __init__(
        self,
        model_file: str | Path | None = None,
        *,
        model_proto: bytes | None = None,
        model_max_length: int | None = None,
        extra_ids: int = 0,
        eos_token: str = "</s>",
        pad_token: str = "<pad>",
    ) -> None:
        if (model_file is None) == (model_proto is None):
            raise ValueError("Give exactly one of model_file and model_proto.")
        spm = import_sentencepiece(repr(str(model_file)) if model_file is not None else "this tokenizer")
        self.sp = (spm.SentencePieceProcessor(model_file=str(model_file)) if model_file is not None
                   else spm.SentencePieceProcessor(model_proto=model_proto))
        self.extra_ids = int(extra_ids)
        limit = model_max_length
        self.model_max_length = int(limit) if isinstance(limit, int) and 0 < limit < NO_LIMIT else T5_DEFAULT_MAX_LENGTH
        # Looked up by piece as transformers does: T5's model marks them pad_id/eos_id too, but
        # the piece strings are what its tokenizer config names.
        self.eos_token_id = self.special_id(eos_token)
        self.pad_token_id = self.special_id(pad_token)
        self.unk_token_id = int(self.sp.unk_id())

    def special_id(self, piece: str) -> int:
        i = int(self.sp.piece_to_id(piece))
        if i == self.sp.unk_id() and piece != self.sp.id_to_piece(i):
            raise ValueError(f"The sentencepiece model has no {piece!r} piece; it is not a T5 tokenizer.")
        return i

    @classmethod
    def from_pretrained(cls, folder: str | Path, local_files_only: bool = True) -> T5SentencePieceTokenizer:
        """Read a transformers T5 tokenizer folder: ``spiece.model`` and, when present,
        ``tokenizer_config.json`` / ``special_tokens_map.json``. Always local (the argument is
        accepted so ``load_component`` can call it like a transformers class)."""
        folder = Path(folder)
        model_file = folder / "spiece.model"
        if not model_file.is_file():
            raise FileNotFoundError(f"{model_file} is missing")
        config = read_json(folder / "special_tokens_map.json") | read_json(folder / "tokenizer_config.json")
        extras = config.get("extra_ids")
        if not isinstance(extras, int):
            extras = sum(str(tok).startswith("<extra_id_") for tok in config.get("additional_special_tokens", []))
        return cls(
            model_file, model_max_length=config.get("model_max_length"), extra_ids=extras,
            eos_token=token_text(config.get("eos_token"), "</s>"), pad_token=token_text(config.get("pad_token"), "<pad>"),
        )

    def __len__(self) -> int:
        # T5 appends its sentinel tokens (<extra_id_N>) after the sentencepiece pieces.
        return int(self.sp.get_piece_size()) + self.extra_ids

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        size = int(self.sp.get_piece_size())
        return [self.sp.id_to_piece(int(i)) if i < size else f"<extra_id_{len(self) - 1 - int(i)}>" for i in ids]

    def __call__(
        self,
        text: str | Sequence[str],
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
        verbose: bool = True,
    ) -> TokenBatch:
        """Ids of ``text`` as transformers' T5 tokenizer gives them; ``padding`` is False,
        True/"longest" or "max_length"; ``truncation`` keeps ``</s>`` as the last id. ``verbose``
        is accepted for the same signature: this tokenizer never logs."""
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("T5SentencePieceTokenizer takes a string or a list of strings.")
        ids: list[list[int]] = [list(x) for x in self.sp.encode(texts)] if texts else []
        limit = self.model_max_length if max_length is None else int(max_length)
        special = [self.eos_token_id] if add_special_tokens else []
        if truncation not in (False, "do_not_truncate"):
            # transformers cuts the text before appending </s>, so the encoder still sees the end marker.
            ids = [x[: max(limit - len(special), 0)] for x in ids]
        ids = [x + special for x in ids]
        mask = [[1] * len(x) for x in ids]
        if padding in (True, "longest", "max_length"):
            width = limit if padding == "max_length" else max((len(x) for x in ids), default=0)
            mask = [m + [0] * (width - len(x)) for x, m in zip(ids, mask, strict=True)]
            ids = [x + [self.pad_token_id] * (width - len(x)) for x in ids]
        elif padding not in (False, "do_not_pad"):
            raise ValueError(f"padding={padding!r} is not one of False, True, 'longest', 'max_length'.")
        if return_tensors == "pt":
            if len({len(x) for x in ids}) > 1:
                raise ValueError("Texts of different token lengths need padding=True or 'max_length' to make a tensor.")
            # Host tensors, as a transformers tokenizer returns: the text encoder's caller moves them.
            input_ids = torch.tensor(ids, dtype=torch.long, device="cpu").view(len(ids), -1)
            attention = torch.tensor(mask, dtype=torch.long, device="cpu").view(len(ids), -1)
            return TokenBatch(input_ids, attention)
        if return_tensors is not None:
            raise ValueError(f"return_tensors={return_tensors!r} is not supported; use 'pt' or None.")
        if single:
            return TokenBatch(ids[0], mask[0])
        return TokenBatch(ids, mask)


def read_json(path: Path) -> dict[str, Any]:
    """A tokenizer config file as a dict; {} when absent (transformers treats both as optional)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def token_text(value: Any, default: str) -> str:
    """A special token as configs store it: a string, or a serialised AddedToken with ``content``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return default
