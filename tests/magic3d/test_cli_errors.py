"""Every bad input gets one line on stderr, exit code 2, no traceback, and nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from magic3d import cli


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_size for p in root.rglob("*")}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["magic3d", *argv])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, capsys.readouterr().err


def build_case(name: str, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """argv for case ``name``; creates the inputs it needs under ``tmp/inputs``."""
    inputs = tmp / "inputs"
    inputs.mkdir(exist_ok=True)
    out = str(tmp / "out")
    gen = ["generate", "--out", out]
    if name == "empty prompt":
        return [*gen, ""]
    if name == "whitespace prompt":
        return [*gen, "  \t \n "]
    if name == "control-character prompt":
        return [*gen, "\x00\x07\x1b\x7f"]
    if name == "10k-character prompt of unknown words":
        return [*gen, "x" * 10_000, "--prior", "builtin"]
    if name == "path-traversal prompt":
        return [*gen, "../../../etc/passwd", "--prior", "builtin"]
    if name == "word the built-in prior does not know":
        return [*gen, "a purple dragon", "--prior", "builtin"]
    if name == "unknown preset":
        return [*gen, "a red cube", "--preset", "no-such-preset"]
    if name == "unknown config key":
        return [*gen, "a red cube", "--set", "coarse.no_such_key=1"]
    if name == "unknown config section":
        return [*gen, "a red cube", "--set", "nowhere.steps=1"]
    if name == "negative steps":
        return [*gen, "a red cube", "--set", "coarse.steps=-5"]
    if name == "negative fine steps":
        return [*gen, "a red cube", "--set", "fine.steps=-1"]
    if name == "resolution the prior cannot take":
        return [*gen, "a red cube", "--set", "coarse.resolution=30"]
    if name == "steps not a number":
        return [*gen, "a red cube", "--set", "coarse.steps=many"]
    if name == "t_min above t_max":
        return [*gen, "a red cube", "--set", "coarse.sds.t_min=0.99"]
    if name == "guidance scale below 1":
        return [*gen, "a red cube", "--set", "coarse.sds.guidance_scale=0.5"]
    if name == "unknown export format":
        return [*gen, "a red cube", "--set", "export.formats=fbx"]
    if name == "override without =":
        return [*gen, "a red cube", "--set", "coarse.steps"]
    if name == "zero asset size":
        return [*gen, "a red cube", "--set", "export.size_m=0"]
    if name == "unknown device":
        return [*gen, "a red cube", "--device", "tpu"]
    if name == "cuda without a GPU":
        if __import__("torch").cuda.is_available():
            pytest.skip("a CUDA device is present here")
        return [*gen, "a red cube", "--device", "cuda"]
    if name == "missing prior folder":
        return [*gen, "a red cube", "--prior", str(inputs / "no-such-model")]
    if name == "empty prior folder":
        (inputs / "empty-model").mkdir()
        return [*gen, "a red cube", "--prior", str(inputs / "empty-model")]
    if name == "corrupt prior folder":
        bad = inputs / "corrupt-model"
        bad.mkdir()
        (bad / "model_index.json").write_text("{ not json", encoding="utf-8")
        return [*gen, "a red cube", "--prior", str(bad)]
    if name == "hub prior offline with an empty cache":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_HOME", str(inputs / "hf-home"))
        monkeypatch.delenv("HF_HUB_CACHE", raising=False)
        return [*gen, "a red cube", "--prior", "stabilityai/stable-diffusion-2-1-base"]
    if name == "output folder under a file":
        blocker = inputs / "a-file"
        blocker.write_text("x", encoding="utf-8")
        return ["generate", "a red cube", "--out", str(blocker / "out")]
    if name == "preset file that is not YAML":
        bad = inputs / "bad.yaml"
        bad.write_text("coarse: [unclosed", encoding="utf-8")
        return [*gen, "a red cube", "--preset", str(bad)]
    if name == "preset file that is a list":
        bad = inputs / "list.yaml"
        bad.write_text("- 1\n- 2\n", encoding="utf-8")
        return [*gen, "a red cube", "--preset", str(bad)]
    if name == "export of a folder that is not a run":
        return ["export", str(inputs)]
    if name == "export of an unfinished run":
        run = inputs / "half-run"
        run.mkdir()
        (run / "run.json").write_text('{"status": "running", "prompt": "a red cube"}', encoding="utf-8")
        return ["export", str(run), "--format", "glb"]
    if name == "preview of a missing file":
        return ["preview", str(inputs / "missing.glb")]
    if name == "preview of a text file":
        (inputs / "notes.txt").write_text("hello", encoding="utf-8")
        return ["preview", str(inputs / "notes.txt")]
    if name == "preview of a corrupt GLB":
        (inputs / "broken.glb").write_bytes(b"glTF\x02\x00\x00\x00garbage")
        return ["preview", str(inputs / "broken.glb"), "--out", str(tmp / "out" / "p.gif")]
    # Values: finite and within bounds, checked before work (BOUNDS in magic3d/config.py).
    if name in VALUE_CASES:
        return [*gen, "a red cube", "--prior", "builtin", *VALUE_CASES[name]]
    # Paths: what a path is, said in words; nothing written through links.
    if name == "empty --out":
        return ["generate", "a red cube", "--prior", "builtin", "--out", ""]
    if name == "preset that is a FIFO":
        os.mkfifo(inputs / "fifo.yaml")
        return [*gen, "a red cube", "--preset", str(inputs / "fifo.yaml")]
    if name == "preset that is a dangling link":
        (inputs / "gone.yaml").symlink_to(inputs / "nowhere.yaml")
        return [*gen, "a red cube", "--preset", str(inputs / "gone.yaml")]
    if name == "preset that is a folder":
        (inputs / "dir.yaml").mkdir()
        return [*gen, "a red cube", "--preset", str(inputs / "dir.yaml")]
    if name == "preset with NUL bytes":
        (inputs / "nul.yaml").write_bytes(b"coarse:\x00 {}")
        return [*gen, "a red cube", "--preset", str(inputs / "nul.yaml")]
    if name in ("run folder that is a link", "checkpoints that are a link"):
        (tmp / "elsewhere").mkdir()
        run = tmp / "out" / "a-red-cube"
        link = run if name == "run folder that is a link" else run / "checkpoints"
        link.parent.mkdir(parents=True)
        link.symlink_to(tmp / "elsewhere", target_is_directory=True)
        return [*gen, "a red cube", "--prior", "builtin"]
    if name == "run.json that is a folder":
        (tmp / "out" / "a-red-cube" / "run.json").mkdir(parents=True)
        return [*gen, "a red cube", "--prior", "builtin"]
    if name == "run.json from another prompt":
        run = tmp / "out" / "a-red-cube"
        run.mkdir(parents=True)
        (run / "run.json").write_text('{"prompt": "a blue cube", "config": {}, "status": "done"}', encoding="utf-8")
        return [*gen, "a red cube", "--prior", "builtin"]
    if name == "export with a damaged baked mesh":
        run = inputs / "done-run"
        (run / "checkpoints").mkdir(parents=True)
        (run / "run.json").write_text('{"status": "done", "prompt": "a red cube", "config": {"export": {}}}')
        (run / "checkpoints" / "baked.glb").write_bytes(b"glTF\x02\x00\x00\x00garbage")
        return ["export", str(run), "--format", "glb"]
    if name == "export with a wrong-typed config":
        run = inputs / "odd-run"
        (run / "checkpoints").mkdir(parents=True)
        (run / "run.json").write_text('{"status": "done", "prompt": "a red cube", "config": [1, 2]}')
        (run / "checkpoints" / "baked.glb").write_bytes(b"x")
        return ["export", str(run), "--format", "glb"]
    if name == "export size that is not a number":
        run = inputs / "nan-run"
        (run / "checkpoints").mkdir(parents=True)
        (run / "run.json").write_text('{"status": "done", "prompt": "a red cube", "config": {"export": {}}}')
        (run / "checkpoints" / "baked.glb").write_bytes(b"x")
        return ["export", str(run), "--size", "nan"]
    if name == "preview frames past the bound":
        (inputs / "cube.glb").write_bytes(b"x")
        return ["preview", str(inputs / "cube.glb"), "--frames", "100000"]
    if name in ("batch file /dev/zero", "batch timeout NaN"):
        listed = inputs / "prompts.txt"
        listed.write_text("a red cube\n", encoding="utf-8")
        if name == "batch file /dev/zero":
            return ["batch", "/dev/zero", "--out", out, "--prior", "builtin"]
        return ["batch", str(listed), "--out", out, "--prior", "builtin", "--timeout", "nan"]
    raise AssertionError(name)


ALIAS_BOMB = "coarse.steps=" + "[" + ", ".join(
    ["&a [1,1,1,1,1,1,1,1,1]", *(f"&{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8))]) + "]"
VALUE_CASES = {
    "NaN learning rate": ["--set", "coarse.lr=nan"],
    "infinite guidance scale": ["--set", "fine.sds.guidance_scale=inf"],
    "NaN asset size": ["--set", "export.size_m=nan"],
    "negative thread count": ["--set", "runtime.threads=-1"],
    "seed past 2**63": ["--seed", str(2**64)],
    "a trillion steps": ["--set", "coarse.steps=1000000000000"],
    "100,000 preview frames": ["--set", "export.preview_frames=100000"],
    "texture of one pixel": ["--set", "bake.texture_size=1"],
    "YAML tag in --set": ["--set", "coarse.steps=!!python/object/apply:os.system ['true']"],
    "YAML alias bomb in --set": ["--set", ALIAS_BOMB],
    "a bool where a number goes": ["--set", "coarse.steps=true"],
}


CASES = [
    "empty prompt",
    "whitespace prompt",
    "control-character prompt",
    "10k-character prompt of unknown words",
    "path-traversal prompt",
    "word the built-in prior does not know",
    "unknown preset",
    "unknown config key",
    "unknown config section",
    "negative steps",
    "negative fine steps",
    "resolution the prior cannot take",
    "steps not a number",
    "t_min above t_max",
    "guidance scale below 1",
    "unknown export format",
    "override without =",
    "zero asset size",
    "unknown device",
    "cuda without a GPU",
    "missing prior folder",
    "empty prior folder",
    "corrupt prior folder",
    "hub prior offline with an empty cache",
    "output folder under a file",
    "preset file that is not YAML",
    "preset file that is a list",
    "export of a folder that is not a run",
    "export of an unfinished run",
    "preview of a missing file",
    "preview of a text file",
    "preview of a corrupt GLB",
    *VALUE_CASES,
    "empty --out",
    "preset that is a FIFO",
    "preset that is a dangling link",
    "preset that is a folder",
    "preset with NUL bytes",
    "run folder that is a link",
    "checkpoints that are a link",
    "run.json that is a folder",
    "run.json from another prompt",
    "export with a damaged baked mesh",
    "export with a wrong-typed config",
    "export size that is not a number",
    "preview frames past the bound",
    "batch file /dev/zero",
    "batch timeout NaN",
]

# What the message must mention, so a test fails if the wrong check fires.
MENTIONS = {
    "unknown preset": "no-such-preset",
    "unknown config key": "coarse.no_such_key",
    "unknown config section": "nowhere",
    "negative steps": "coarse.steps",
    "negative fine steps": "fine.steps",
    "resolution the prior cannot take": "coarse.resolution",
    "steps not a number": "coarse.steps",
    "t_min above t_max": "coarse.sds.t_min",
    "guidance scale below 1": "guidance_scale",
    "unknown export format": "export.formats",
    "zero asset size": "export.size_m",
    "word the built-in prior does not know": "dragon",
    "hub prior offline with an empty cache": "stabilityai/stable-diffusion-2-1-base",
    "missing prior folder": "no-such-model",
    "unknown device": "tpu",
    "NaN learning rate": "coarse.lr",
    "infinite guidance scale": "fine.sds.guidance_scale",
    "NaN asset size": "export.size_m",
    "negative thread count": "runtime.threads",
    "seed past 2**63": "runtime.seed",
    "a trillion steps": "coarse.steps",
    "100,000 preview frames": "export.preview_frames",
    "texture of one pixel": "bake.texture_size",
    "YAML tag in --set": "YAML",
    "a bool where a number goes": "coarse.steps",
    "empty --out": "--out",
    "preset that is a FIFO": "FIFO",
    "preset that is a dangling link": "dangling link",
    "preset that is a folder": "folder",
    "preset with NUL bytes": "NUL",
    "run folder that is a link": "is a link",
    "checkpoints that are a link": "checkpoints",
    "run.json that is a folder": "folder",
    "run.json from another prompt": "--restart",
    "export with a damaged baked mesh": "damaged",
    "export with a wrong-typed config": "damaged",
    "export size that is not a number": "--size",
    "preview frames past the bound": "--frames",
    "batch file /dev/zero": "/dev/zero",
    "batch timeout NaN": "--timeout",
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line(case, tmp_path, capsys, monkeypatch):
    argv = build_case(case, tmp_path, monkeypatch)
    before = snapshot(tmp_path)
    code, err = run_cli(argv, capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"{case}: exit {code}, stderr {err!r}"
    assert len(lines) == 1, f"{case}: expected one line, got {lines!r}"
    assert lines[0].startswith("error: ")
    assert len(lines[0]) <= 300, f"{case}: {len(lines[0])} characters"
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before, f"{case}: files were written"
    if case in MENTIONS:
        assert MENTIONS[case] in lines[0], lines[0]


def test_installed_command_reports_bad_input_in_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run(
        [sys.executable, "-m", "magic3d", "generate", "a red cube", "--set", "coarse.steps=-1", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "coarse.steps" in proc.stderr
    assert not (tmp_path / "o").exists()
