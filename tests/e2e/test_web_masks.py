"""The page's COCO RLE decoder (static/masks.js), run in Chromium, against pycocotools' encoding."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from segany.io.rle import coco_encode
from web_support import WebServer

DECODE_IN_PAGE = """async (rle) => {
  const { decodeRle } = await import("/static/masks.js");
  const m = decodeRle(rle);
  let checksum = 0;
  for (let row = 0; row < m.h; row += 1)
    for (let col = 0; col < m.w; col += 1)
      if (m.bits[row * m.w + col]) checksum = (checksum + (row + m.y0) * m.width + (col + m.x0)) % 2147483647;
  return { box: [m.x0, m.y0, m.w, m.h], area: m.area, checksum };
}"""


def blobs(size_hw: tuple[int, int], seed: int) -> np.ndarray:
    """A few filled ellipses and a single pixel: runs of very different lengths, some across columns."""
    rng = np.random.default_rng(seed)
    height, width = size_hw
    rows, cols = np.ogrid[:height, :width]
    mask = np.zeros(size_hw, dtype=bool)
    for _ in range(3):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.5, max(1.0, height / 4)), rng.uniform(0.5, max(1.0, width / 4))
        mask |= ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
    mask[height - 1, width - 1] = True
    return mask


@pytest.mark.parametrize("size_hw", [(300, 451), (1, 7), (5000, 5000), (4000, 6000)])
def test_rle_decoder_matches_pycocotools(browser: Any, web_server: WebServer, size_hw: tuple[int, int]) -> None:
    page = browser.new_page()
    try:
        page.goto(web_server.url + "/static/index.html")
        for seed in range(2):
            mask = blobs(size_hw, seed)
            got = page.evaluate(DECODE_IN_PAGE, coco_encode(mask))
            ys, xs = np.nonzero(mask)
            flat = ys.astype(np.int64) * size_hw[1] + xs
            assert got["area"] == mask.sum()
            assert got["box"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert got["checksum"] == int(flat.sum() % 2147483647)
    finally:
        page.close()
