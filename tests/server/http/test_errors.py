"""The one table from domain errors to status codes."""
from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from segany.errors import CheckpointError, ImageTooLarge, InvalidImage, InvalidPrompt, MissingExtra, ModelNotFound
from segany.server.http.errors import (
    ImageIdNotFound, PayloadTooLarge, RequestTimeout, ServerBusy, Unauthorized, UrlNotAllowed, describe,
)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (InvalidPrompt("box: bad", "box"), 400, "invalid_prompt"),
        (InvalidImage("image: bad"), 400, "invalid_image"),
        (ImageTooLarge("image: big"), 413, "image_too_large"),
        (PayloadTooLarge("body: big", "body"), 413, "payload_too_large"),
        (ImageIdNotFound("gone"), 404, "image_id_not_found"),
        (ModelNotFound("no such model"), 404, "model_not_found"),
        (CheckpointError("truncated"), 404, "model_unavailable"),
        (UrlNotAllowed("private", "image"), 403, "url_not_allowed"),
        (Unauthorized("no key"), 401, "unauthorized"),
        (MissingExtra("coco", "pycocotools", "COCO RLE"), 501, "missing_extra"),
        (ServerBusy("busy", retry_after_s=3), 503, "server_busy"),
        (RequestTimeout("slow"), 504, "timeout"),
    ],
)
def test_table(error, status, code):
    info = describe(error)
    assert (info.status, info.code) == (status, code)
    assert info.message == str(error)


def test_headers_and_fields():
    assert describe(ServerBusy("busy", retry_after_s=3)).headers == {"Retry-After": "3"}
    assert describe(Unauthorized("x")).headers == {"WWW-Authenticate": "Bearer"}
    assert describe(InvalidPrompt("prompts[1].box: bad", "prompts[1].box")).field == "prompts[1].box"


def test_validation_errors_name_the_path():
    class Body(BaseModel):
        items: list[int]

    with pytest.raises(ValidationError) as caught:
        Body.model_validate({"items": [1, "x"]})
    info = describe(caught.value)
    assert info.status == 422 and info.field == "items.1" and info.message.startswith("items.1:")


def test_unknown_errors_hide_internals(caplog):
    info = describe(RuntimeError("secret path /srv/x"))
    assert (info.status, info.message) == (500, "internal server error")
    assert "secret" in caplog.text  # logged for the operator, not sent to the client
