"""Issue 19, defect 2: checkpoints say what made them, and are resumed from only by the same run."""

from __future__ import annotations

import json

import pytest

from magic3d.errors import ConfigError
from magic3d.pipeline import generate

TINY = ["coarse.steps=4", "coarse.checkpoint_every=2", "coarse.resolution=16", "fine.steps=0",
        "fine.tet_resolution=32", "bake.texture_size=64", "export.preview=false", "export.formats=[obj]"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("stale")
    result = generate("a red cube", out=out, prior="builtin", overrides=TINY, seed=1)
    return out, result.run_dir


@pytest.mark.parametrize("damage", ["truncated", "deleted", "other prompt"])
def test_old_checkpoints_are_never_used_by_other_settings(finished, damage, tmp_path):
    import shutil

    out = tmp_path / "out"
    run_dir = out / finished[1].name
    shutil.copytree(finished[1], run_dir)
    record = run_dir / "run.json"
    if damage == "truncated":
        record.write_text(record.read_text()[:40])
    elif damage == "deleted":
        record.unlink()
    else:
        data = json.loads(record.read_text())
        record.write_text(json.dumps({**data, "prompt": "a blue cube"}))
    before = record.read_bytes() if record.exists() else None
    checkpoints = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()}
    with pytest.raises(ConfigError, match="--restart"):
        generate("a red cube", out=out, prior="builtin", overrides=[*TINY, "coarse.sds.guidance_scale=30"], seed=2)
    # Nothing recorded the new settings, nothing of the old run was touched.
    assert (record.read_bytes() if record.exists() else None) == before
    assert {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()} == checkpoints


def test_the_same_run_resumes_from_its_checkpoints_without_run_json(finished, tmp_path):
    import shutil

    run_dir = tmp_path / "out" / finished[1].name
    shutil.copytree(finished[1], run_dir)
    (run_dir / "run.json").unlink()
    (run_dir / "asset.obj").unlink()
    result = generate("a red cube", out=tmp_path / "out", prior="builtin", overrides=TINY, seed=1)
    assert result.metrics["coarse"] == json.loads((finished[1] / "run.json").read_text())["metrics"]["coarse"]
    assert (run_dir / "asset.obj").read_bytes() == (finished[1] / "asset.obj").read_bytes()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "done" and record["seed"] == 1


def test_a_run_json_folder_is_one_line(tmp_path):
    from magic3d.errors import InputError

    (tmp_path / "out" / "a-red-cube" / "run.json").mkdir(parents=True)
    with pytest.raises(InputError, match="is a folder"):
        generate("a red cube", out=tmp_path / "out", prior="builtin", overrides=TINY)


def test_a_run_json_of_the_wrong_shape_is_a_damaged_record(tmp_path):
    record = tmp_path / "out" / "a-red-cube" / "run.json"
    record.parent.mkdir(parents=True)
    record.write_text("[1, 2]")  # not a record at all: treated as missing, the run starts
    generate("a red cube", out=tmp_path / "out", prior="builtin", overrides=TINY)
    assert json.loads(record.read_text())["status"] == "done"
    record.write_text(json.dumps({"prompt": "a red cube", "config": [3]}))  # a record of another config
    with pytest.raises(ConfigError, match="--restart"):
        generate("a red cube", out=tmp_path / "out", prior="builtin", overrides=TINY)
