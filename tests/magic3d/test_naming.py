from pathlib import Path

import pytest

from magic3d.errors import InputError
from magic3d.naming import MAX_SLUG_CHARS, clean_prompt, inside, slugify, unique_slugs


@pytest.mark.parametrize(
    ("prompt", "slug"),
    [
        ("a red cube", "a-red-cube"),
        ("  A DSLR photo of an Astronaut!! ", "a-dslr-photo-of-an-astronaut"),
        ("../../etc/passwd", "etc-passwd"),
        ("a/b\\c", "a-b-c"),
    ],
)
def test_slugify_plain_prompts(prompt: str, slug: str) -> None:
    assert slugify(prompt) == slug


@pytest.mark.parametrize("prompt", ["..", "/", "...", "\u5b87\u822a\u5458", "\U0001f680\U0001f680", "\x00\x01"])
def test_slugify_never_empty_or_traversing(prompt: str) -> None:
    slug = slugify(prompt)
    assert slug and "/" not in slug and "\\" not in slug and not slug.startswith(".")
    assert all(c.isascii() and (c.isalnum() or c == "-") for c in slug)


def test_slugify_distinguishes_non_ascii_prompts() -> None:
    assert slugify("\u5b87\u822a\u5458") != slugify("\u732b")


def test_slug_length_capped_and_unique_for_long_prompts() -> None:
    a, b = slugify("x " * 5000 + "a"), slugify("x " * 5000 + "b")
    assert len(a) <= MAX_SLUG_CHARS and len(b) <= MAX_SLUG_CHARS and a != b


@pytest.mark.parametrize("name", ["con", "NUL", "com1", "lpt9"])
def test_reserved_windows_names_prefixed(name: str) -> None:
    assert slugify(name).startswith("asset-")


def test_unique_slugs_suffixes_repeats() -> None:
    assert unique_slugs(["a cube", "A cube!", "a cube", "a ball"]) == ["a-cube", "a-cube-2", "a-cube-3", "a-ball"]


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t", "\x00\x07"])
def test_clean_prompt_rejects_empty(prompt: str) -> None:
    with pytest.raises(InputError, match="empty"):
        clean_prompt(prompt)


def test_clean_prompt_strips_controls_and_caps_length() -> None:
    assert clean_prompt("a\x00red\ncube") == "a red cube"
    assert len(clean_prompt("a" * 10000)) == 2000


def test_inside_rejects_escape(tmp_path: Path) -> None:
    assert inside(tmp_path, "a-b") == (tmp_path / "a-b").resolve()
    with pytest.raises(InputError, match="outside"):
        inside(tmp_path, "../x")


@pytest.mark.parametrize("prompt, word", [
    ("a red mushroom", "mushroom"),
    ("a DSLR photo of an astronaut riding a horse", "astronaut"),
    ("a zoomed out DSLR photo of a baby bunny sitting on top of a stack of pancakes", "bunny"),
    ("a squirrel wearing a hat", "squirrel"),
    ("small red cube, front view", "cube"),
    ("a cup of coffee", "cup"),
    ("   ", ""),
])
def test_object_word_is_the_head_noun_a_semantic_label_needs(prompt, word):
    from magic3d.naming import object_word

    assert object_word(prompt) == word
