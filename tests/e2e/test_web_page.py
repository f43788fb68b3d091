"""The page at `/` in headless Chromium against a real server: clicks, boxes, "Segment everything", exports."""
from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from segany.io.rle import coco_decode
from web_support import ARTIFACTS, IMAGES, PageVisit, WebServer

CHELSEA = IMAGES / "chelsea.png"  # 451x300
MARKER_RADIUS_PX = 20  # points, boxes and outlines are drawn within this distance of the prompt


def open_image(visit: PageVisit, path: Path) -> dict[str, Any]:
    """Open `path` through the file input; returns the /v1/embed answer once the page is ready."""
    with visit.page.expect_response(lambda r: r.url.endswith("/v1/embed")) as embed:
        visit.page.set_input_files("#file-input", str(path))
    assert embed.value.status == 200, embed.value.text()
    visit.page.wait_for_selector('#stage[data-state="ready"]')
    return embed.value.json()


def stage_data(visit: PageVisit) -> dict[str, str]:
    return visit.page.eval_on_selector("#stage", "element => ({...element.dataset})")


def to_client(visit: PageVisit, x: float, y: float) -> tuple[float, float]:
    """Image pixel (x, y) -> page coordinates of that pixel's centre on the scaled canvas."""
    box = visit.page.locator("#canvas").bounding_box()
    width, height = visit.page.eval_on_selector("#canvas", "c => [c.width, c.height]")
    return box["x"] + (x + 0.5) * box["width"] / width, box["y"] + (y + 0.5) * box["height"] / height


def canvas_pixels(visit: PageVisit) -> np.ndarray:
    """The canvas as an (H, W, 3) uint8 array."""
    url = visit.page.eval_on_selector("#canvas", "c => c.toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    return coco_decode(rle)


def assert_overlay_matches(visit: PageVisit, image_path: Path, mask: np.ndarray, near_xy: list[tuple[float, float]],
                           ) -> None:
    """The canvas differs from the photo inside `mask` and equals it outside (away from prompt marks)."""
    drawn = canvas_pixels(visit).astype(int)
    photo = np.asarray(Image.open(image_path).convert("RGB")).astype(int)
    assert drawn.shape == photo.shape
    rows, cols = np.mgrid[: mask.shape[0], : mask.shape[1]]
    away = np.ones_like(mask)
    for x, y in near_xy:
        away &= (cols - x) ** 2 + (rows - y) ** 2 > MARKER_RADIUS_PX**2
    changed = np.abs(drawn - photo).max(axis=2) > 8
    inside, outside = mask & away, ~mask & away
    assert inside.sum() > 100
    assert changed[inside].mean() > 0.95, "the mask overlay is not drawn over the mask"
    assert changed[outside].mean() < 0.01, "pixels outside the mask were painted"


def assert_local_only(visit: PageVisit, server: WebServer) -> None:
    """Works offline: every request went to the server that served the page (or stayed in the browser)."""
    foreign = [u for u in visit.requests if not u.startswith((server.url + "/", "data:", "blob:"))]
    assert foreign == []
    assert visit.errors == []


def test_click_embeds_once_and_decodes_a_mask(visit: PageVisit, web_server: WebServer) -> None:
    embedded = open_image(visit, CHELSEA)
    assert (embedded["width"], embedded["height"]) == (451, 300)
    assert stage_data(visit)["imageId"] == embedded["image_id"]

    with visit.page.expect_response(lambda r: r.url.endswith("/v1/segment")) as answer:
        visit.page.mouse.click(*to_client(visit, 200, 150))
    request = json.loads(answer.value.request.post_data)
    assert request["image_id"] == embedded["image_id"] and "image" not in request  # clicks only decode
    assert request["prompts"] == [{"points": [[200.5, 150.5]], "labels": [1]}]
    body = answer.value.json()
    masks = body["results"][0]["masks"]
    assert len(masks) == 3 and all("rle" in m for m in masks)
    best = decode_rle(masks[0]["rle"])
    assert best.sum() == masks[0]["area"] > 0  # the decode returned a real mask
    visit.page.wait_for_selector('#stage[data-decodes="1"]')
    data = stage_data(visit)
    assert (data["maskCount"], data["candidates"], data["pick"]) == ("1", "3", "0")
    assert float(data["lastRoundtripMs"]) > 0
    assert "click to mask" in visit.page.inner_text("#decode-latency")
    assert_overlay_matches(visit, CHELSEA, best, [(200, 150)])

    # A right click adds a negative point to the same object: one prompt with both points.
    with visit.page.expect_response(lambda r: r.url.endswith("/v1/segment")) as answer:
        visit.page.mouse.click(*to_client(visit, 60, 40), button="right")
    assert json.loads(answer.value.request.post_data)["prompts"][0]["labels"] == [1, 0]
    visit.page.wait_for_selector('#stage[data-decodes="2"]')
    second = answer.value.json()["results"][0]["masks"]
    assert_overlay_matches(visit, CHELSEA, decode_rle(second[0]["rle"]), [(200, 150), (60, 40)])

    # Cycling shows the next candidate.
    visit.page.keyboard.press("]")
    assert stage_data(visit)["pick"] == "1"
    assert_overlay_matches(visit, CHELSEA, decode_rle(second[1]["rle"]), [(200, 150), (60, 40)])
    assert f"{second[1]['area']:,} px" in visit.page.inner_text("#candidate-label")

    # Hovering the mask highlights it and shows its score and area.
    ys, xs = np.nonzero(decode_rle(second[1]["rle"]))
    visit.page.mouse.move(*to_client(visit, xs[len(xs) // 2], ys[len(ys) // 2]))
    tooltip = visit.page.locator("#tooltip")
    assert tooltip.is_visible()
    assert f"score {second[1]['score']:.3f}" in tooltip.inner_text()
    assert f"{second[1]['area']:,} px" in tooltip.inner_text()
    assert stage_data(visit)["hoverId"] != ""
    ARTIFACTS.mkdir(exist_ok=True)
    visit.page.screenshot(path=str(ARTIFACTS / "web_page_click.png"), full_page=True)

    # Enter keeps the object; undo brings its candidates back without a new decode.
    visit.page.keyboard.press("Enter")
    visit.page.wait_for_selector('#stage[data-objects="1"]')
    assert (stage_data(visit)["candidates"], stage_data(visit)["maskCount"]) == ("0", "1")
    visit.page.keyboard.press("Control+z")
    data = stage_data(visit)
    assert (data["objects"], data["candidates"], data["pick"]) == ("0", "3", "1")
    assert data["decodes"] == "2"
    assert sum(u.endswith("/v1/embed") for u in visit.requests) == 1
    assert_local_only(visit, web_server)


def test_box_drag_decodes_a_box_prompt(visit: PageVisit, web_server: WebServer) -> None:
    open_image(visit, CHELSEA)
    page = visit.page
    with page.expect_response(lambda r: r.url.endswith("/v1/segment")) as answer:
        page.mouse.move(*to_client(visit, 80, 50))
        page.mouse.down()
        page.mouse.move(*to_client(visit, 200, 120), steps=4)
        page.mouse.move(*to_client(visit, 330, 260), steps=4)
        page.mouse.up()
    prompt = json.loads(answer.value.request.post_data)["prompts"][0]
    assert "points" not in prompt
    assert np.allclose(prompt["box"], [80.5, 50.5, 330.5, 260.5], atol=1.0)
    masks = answer.value.json()["results"][0]["masks"]
    best = decode_rle(masks[0]["rle"])
    assert best.sum() > 0
    page.wait_for_selector('#stage[data-decodes="1"]')
    assert stage_data(visit)["maskCount"] == "1"
    x0, y0, x1, y1 = prompt["box"]
    corners = [(x, y) for x in np.linspace(x0, x1, 12) for y in (y0, y1)] + \
              [(x, y) for y in np.linspace(y0, y1, 12) for x in (x0, x1)]
    assert_overlay_matches(visit, CHELSEA, best, corners)
    assert_local_only(visit, web_server)


def test_segment_everything_and_downloads(visit: PageVisit, web_server: WebServer) -> None:
    open_image(visit, CHELSEA)
    page = visit.page
    # 3 points per side, not the server's default of 4: the grid of the answer shows the field was sent.
    page.fill("#auto-points-per-side", "3")
    page.fill("#auto-pred-iou-thresh", "0")
    page.fill("#auto-stability-score-thresh", "0")
    with page.expect_response(lambda r: r.url.endswith("/v1/auto"), timeout=300_000) as answer:
        page.click("#auto-button")
    assert answer.value.status == 200, answer.value.text()
    records = answer.value.json()["records"]
    assert len(records) > 0
    grid_x, grid_y = {451 * (i + 0.5) / 3 for i in range(3)}, {300 * (i + 0.5) / 3 for i in range(3)}
    for record in records:
        (x, y), = record["point_coords"]
        assert min(abs(x - g) for g in grid_x) < 1e-3 and min(abs(y - g) for g in grid_y) < 1e-3
    page.wait_for_selector(f'#stage[data-auto-count="{len(records)}"]')
    shown = [r for r in records if r["area"] > 0]
    assert stage_data(visit)["maskCount"] == str(len(shown))
    assert page.locator("#mask-list li").count() == len(shown)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_page_segment_everything.png"), full_page=True)

    with page.expect_download() as download:
        page.click("#download-coco")
    coco = json.loads(Path(download.value.path()).read_text())
    assert coco["images"] == [{"id": 1, "file_name": "chelsea.png", "width": 451, "height": 300}]
    assert sorted(a["segmentation"]["counts"] for a in coco["annotations"]) == sorted(r["rle"]["counts"] for r in shown)
    for annotation in coco["annotations"]:
        mask = decode_rle(annotation["segmentation"])
        assert annotation["area"] == mask.sum()
        ys, xs = np.nonzero(mask)
        assert annotation["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]

    with page.expect_download() as download:
        page.click("#download-zip")
    with zipfile.ZipFile(download.value.path()) as archive:
        assert archive.testzip() is None  # every CRC-32 matches
        names = archive.namelist()
        assert names[-1] == "masks.json" and len(names) == len(shown) + 1
        index = json.loads(archive.read("masks.json"))["masks"]
        pngs = {name: np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("L")) for name in names[:-1]}
    expected = sorted(decode_rle(r["rle"]).tobytes() for r in shown)
    assert sorted((png == 255).tobytes() for png in pngs.values()) == expected
    assert all(set(np.unique(png)) <= {0, 255} for png in pngs.values())
    assert [entry["file"] for entry in index] == names[:-1]
    assert_local_only(visit, web_server)


def test_text_field_explains_why_it_is_off(visit: PageVisit) -> None:
    from segany.server.http.webpage import text_capability

    capability = text_capability()
    note = visit.page.locator("#text-note")
    note.wait_for()
    visit.page.wait_for_function("document.querySelector('#text-note').dataset.available !== undefined")
    if capability["available"]:
        pytest.skip("this server takes text prompts; nothing to explain")
    assert note.inner_text() == capability["reason"]
    assert visit.page.locator("#text-input").is_disabled()
    assert visit.page.get_attribute("#text-input", "aria-describedby") == "text-note"


def test_keyboard_only_on_a_narrow_screen(visit: PageVisit, web_server: WebServer) -> None:
    page = visit.page
    page.set_viewport_size({"width": 390, "height": 844})
    open_image(visit, CHELSEA)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    canvas_box = page.locator("#canvas").bounding_box()
    assert canvas_box["x"] >= 0 and canvas_box["x"] + canvas_box["width"] <= 390
    for control in ("#auto-button", "#keep-button", "#download-zip"):
        assert page.locator(control).bounding_box()["width"] <= 390

    page.focus("#canvas")
    page.keyboard.press("ArrowRight")  # the cursor appears at the centre, then moves one step right
    with page.expect_response(lambda r: r.url.endswith("/v1/segment")) as answer:
        page.keyboard.press("Space")
    point = json.loads(answer.value.request.post_data)["prompts"][0]["points"][0]
    step = round(300 / 50)
    assert point == [451 / 2 + step, 150]
    page.wait_for_selector('#stage[data-decodes="1"]')
    assert stage_data(visit)["maskCount"] == "1"
    page.keyboard.press("Enter")
    page.wait_for_selector('#stage[data-objects="1"]')
    assert page.inner_text("#mask-list li").startswith("Object 1 · score")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_page_narrow.png"), full_page=True)
    assert_local_only(visit, web_server)


DROP_OR_PASTE = """([kind, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], "from-" + kind + ".png", { type: "image/png" }));
  const event = kind === "drop"
    ? new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true })
    : new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true });
  document.querySelector(kind === "drop" ? "#stage" : "body").dispatchEvent(event);
}"""


@pytest.mark.parametrize("kind", ["drop", "paste"])
def test_dropped_or_pasted_image_is_embedded(visit: PageVisit, kind: str) -> None:
    b64 = base64.b64encode(CHELSEA.read_bytes()).decode("ascii")
    with visit.page.expect_response(lambda r: r.url.endswith("/v1/embed")) as embed:
        visit.page.evaluate(DROP_OR_PASTE, [kind, b64])
    assert embed.value.status == 200
    visit.page.wait_for_selector('#stage[data-state="ready"]')
    assert stage_data(visit)["imageId"] == embed.value.json()["image_id"]
    assert visit.page.eval_on_selector("#canvas", "c => [c.width, c.height]") == [451, 300]
    assert visit.errors == []
