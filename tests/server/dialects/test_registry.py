"""The dialect registry: every dialect's routes are mounted, and errors go to the most specific dialect."""
from __future__ import annotations

import pytest

from segany.server.dialects import DIALECTS, dialect_for, job_kinds


@pytest.mark.parametrize("path, name", [
    ("/v1/predictions/abc", "replicate"), ("/v1/files/x", "replicate"), ("/v1/sam-v2-image", "segmind"),
    ("/v2/requests/r1/status", "segmind"), ("/predictions/p1", "cog"), ("/health-check", "cog"),
    ("/segment-anything-2", "livepeer"), ("/models/facebook/sam2", "huggingface"), ("/", "huggingface"),
    ("/sam2/embed_image", "roboflow"), ("/v1/segment", "native"), ("/files/key", "native"),
    ("/nowhere", "native"),
])
def test_errors_go_to_the_dialect_with_the_longest_prefix(path: str, name: str) -> None:
    assert dialect_for(path).name == name


def test_names_are_unique_and_job_kinds_come_from_the_job_dialects() -> None:
    names = [dialect.name for dialect in DIALECTS]
    assert len(names) == len(set(names))
    assert set(job_kinds()) == {"replicate", "replicate_video", "cog", "segmind"}
