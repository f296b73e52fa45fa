"""The help of the command and of each subcommand names every option a user needs."""

from __future__ import annotations

import sys

import pytest

from magic3d import cli

EXPECTED = {
    (): ["generate", "export", "preview", "info", "batch"],
    ("generate",): ["PROMPT", "--out", "--seed", "--preset", "--prior", "--set", "--device", "--restart", "--quiet"],
    ("export",): ["RUN_DIR", "--format", "--up-axis", "--size"],
    ("preview",): ["ASSET", "--out", "--frames", "--resolution"],
    ("batch",): ["--out", "--workers", "--backend", "--retries", "--timeout", "--json", "--prior", "--set"],
}


@pytest.mark.parametrize("path", list(EXPECTED))
def test_help_lists_options(path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["magic3d", *path, "--help"])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    missing = [word for word in EXPECTED[path] if word.lower() not in text.lower()]
    assert not missing, f"help of {' '.join(path) or 'magic3d'} lacks {missing}"


def test_info_lists_presets_and_versions(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["magic3d", "info"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert {"builtin", "fast", "paper"} <= set(lines["presets"].split(", "))
    assert lines["torch"].startswith("2.")


@pytest.mark.parametrize("path, flags", [(("generate",), ["--restart", "--quiet"]),
                                         (("batch",), ["--restart", "--skip-invalid", "--json", "--quiet"])])
def test_flags_read_as_flags_without_a_value(path, flags, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["magic3d", *path, "--help"])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        cli.main()
    text = capsys.readouterr().out
    assert "<bool>" not in text
    for flag in flags:
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(flag) or f" {flag} " in ln or f", {flag}" in ln)
        after = line.split(flag, 1)[1].lstrip()
        assert not after.startswith("<"), line  # no metavar: a flag takes no value
