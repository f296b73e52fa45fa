"""The evaluation's contact sheet: each prompt's preview lands in its own tile, in table order."""

from __future__ import annotations

import numpy as np
from PIL import Image


def test_contact_sheet_tiles_previews_in_table_order(tmp_path, load_script):
    eval_builtin = load_script("eval_builtin")
    rows = [{"prompt": "a red cube", "ok": True, "kind": "cube", "colour": "red"},
            {"prompt": "a blue lamp", "ok": False, "kind": "sphere", "colour": "blue"},
            {"prompt": "a green tree", "ok": True, "kind": "tree", "colour": "green"}]
    for row, rgb in zip(rows[:2], [(255, 0, 0), (0, 0, 255)], strict=True):
        run = tmp_path / eval_builtin.slugify(row["prompt"])
        run.mkdir()
        Image.new("RGB", (64, 64), rgb).save(run / "preview.gif")  # the tree's run left no preview
    out = tmp_path / "sheet.png"
    eval_builtin.save_sheet(rows, tmp_path, out)
    sheet = np.asarray(Image.open(out).convert("RGB"))
    tile = 192
    assert sheet.shape == (tile + 28, 5 * tile, 3)  # one row of five columns, caption strip below
    assert tuple(sheet[tile // 2, tile // 2]) == (255, 0, 0)
    assert tuple(sheet[tile // 2, tile + tile // 2]) == (0, 0, 255)
    assert tuple(sheet[tile // 2, 2 * tile + tile // 2]) == (255, 255, 255)
    assert (sheet[tile:, :tile] < 128).any()  # the caption is drawn
    assert not list(tmp_path.glob(".sheet.png.*"))  # written through a temporary name
