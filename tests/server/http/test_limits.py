"""Request limits: body size while streaming, the server-wide body budget, prompt and AMG grid bounds."""
from __future__ import annotations

import asyncio

import pytest

from segany.errors import InvalidInput, InvalidPrompt
from segany.server.http.errors import PayloadTooLarge, ServerBusy
from segany.server.http.limits import BodyBudget, BodyReader, Limits, read_body_limited
from segany.server.settings import ServerSettings

LIMITS = Limits.from_settings(ServerSettings(max_prompts=4, max_points_per_prompt=3, max_points_per_side=64,
                                             max_auto_points=5000))


def _receiver(chunks: list[bytes]):
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return messages.pop(0)

    return receive


def test_body_read_in_chunks_and_stopped_at_the_limit():
    assert asyncio.run(read_body_limited(_receiver([b"ab", b"cd", b"e"]), 5, None)) == b"abcde"
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_body_limited(_receiver([b"abc", b"def"]), 5, None))  # no Content-Length: while reading
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_body_limited(_receiver([b""]), 5, 6))  # declared too large: before reading


def test_body_budget_counts_declared_and_streamed_bytes_and_reports_the_end_of_a_burst():
    bursts: list[int] = []
    budget = BodyBudget(10, on_idle=lambda: bursts.append(budget.held), idle_after_bytes=10)
    declared = BodyReader(_receiver([b"abcdef"]), 100, 6, 60.0)
    declared.charge_to(budget)  # the declared length is reserved before any byte is read
    assert budget.held == 6
    streamed = BodyReader(_receiver([b"abc", b"def"]), 100, None, 60.0)
    streamed.charge_to(budget)
    with pytest.raises(ServerBusy, match="max_buffered_mb"):
        asyncio.run(streamed.read_all())  # 6 + 6 > 10, found while reading a body of no declared length
    streamed.release()
    assert budget.held == 6 and bursts == []
    alone = BodyReader(_receiver([b"x" * 50]), 100, None, 60.0)
    declared.release()
    declared.release()  # idempotent
    assert budget.held == 0 and bursts == []  # a burst of at most 9 bytes held is under idle_after_bytes
    alone.charge_to(budget)
    assert asyncio.run(alone.read_all()) == b"x" * 50  # one body alone is always let in
    alone.release()
    assert bursts == [0]


def test_prompt_limits_name_the_field():
    LIMITS.check_prompt_count(4)
    with pytest.raises(InvalidPrompt) as caught:
        LIMITS.check_prompt_count(5)
    assert caught.value.field == "prompts"
    with pytest.raises(InvalidPrompt) as caught:
        LIMITS.check_point_count(4, "prompts[1].points")
    assert caught.value.field == "prompts[1].points"


def test_auto_grid_counts_every_crop_layer():
    LIMITS.check_auto_grid(64, 0, 1)  # 4096 points
    with pytest.raises(InvalidInput):
        LIMITS.check_auto_grid(65, 0, 1)  # above points_per_side
    with pytest.raises(InvalidInput):
        LIMITS.check_auto_grid(32, 1, 1)  # 1024 + 4 crops x 1024 = 5120 points
    LIMITS.check_auto_grid(32, 1, 2)  # 1024 + 4 x 256 = 2048 points
    with pytest.raises(InvalidInput):
        LIMITS.check_auto_grid(None, 2, 1, explicit_points=400)  # (1 + 4 + 16) x 400 = 8400 points
