"""tools/eval/sample_sheet.py: the README's picture of an engine's frames, drawn again by one command."""

import numpy as np

from tools.eval.evaluate import load_engine
from tools.eval.sample_sheet import BACKGROUND, CELL, SHOWN, sheet


def test_the_sheet_shows_an_avatar_in_every_cell_and_is_the_same_twice():
    engine = load_engine("renderer")
    a, b = np.asarray(sheet(engine)), np.asarray(sheet(engine))
    assert a.shape == (CELL[1] * 2, CELL[0] * 5, 3) and len(SHOWN) == 10
    np.testing.assert_array_equal(a, b)
    for i in range(10):
        x, y = (i % 5) * CELL[0], (i // 5) * CELL[1]
        body = a[y + 20 : y + CELL[1], x : x + CELL[0]]  # below the label
        assert (np.abs(body.astype(int) - BACKGROUND).sum(-1) > 60).mean() > 0.1, SHOWN[i]
