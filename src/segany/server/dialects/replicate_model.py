"""What the Replicate dialect needs to serve one model: its name, version, schema, input check and job handler.

`replicate.py` serves every model of its `MODELS` through the same routes, job store and `submit`; each
model module (`replicate_seed.py`, `replicate_video.py`) ends in one `MODEL = ReplicateModel(...)`.
"""
from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from segany.server.jobs.service import JobService
from segany.server.jobs.store import Job
from segany.server.jobs.workers import JobContext

# (jobs, raw input, api key id, base URL) -> (the input to record, storage keys to tie to the job)
AcceptInput = Callable[[JobService, Any, str | None, str], Awaitable[tuple[dict[str, Any], list[str]]]]


@dataclass(frozen=True)
class ReplicateModel:
    owner: str
    name: str
    version: str  # the version id clients may pin (owner/name:version)
    created_at: str
    description: str
    kind: str  # the job kind its predictions run as
    accept_input: AcceptInput  # validates at submission (4xx naming input.<field>)
    run: Callable[[JobService, Job, JobContext], list[str]]  # the job handler: output file URLs
    openapi_schema: Callable[[], dict[str, Any]]  # Cog's document for the version

    @property
    def id(self) -> str:
        return f"{self.owner}/{self.name}"

    def knows_version(self, version: str) -> bool:
        """True for the version id, `owner/name` and `owner/name:version`."""
        return version in (self.version, self.id, f"{self.id}:{self.version}")


def cog_document(input_schema: dict[str, Any], output_schema: dict[str, Any]) -> dict[str, Any]:
    """A version's `openapi_schema` as Cog publishes it, around the `Input` and `Output` components."""
    return copy.deepcopy({
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": {"/predictions": {"post": {
            "summary": "Predict",
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "properties": {"input": {"$ref": "#/components/schemas/Input"}}}}}},
            "responses": {"200": {"description": "Successful Response", "content": {"application/json": {
                "schema": {"type": "object", "properties": {"output": {"$ref": "#/components/schemas/Output"}}}}}}},
        }}},
        "components": {"schemas": {"Input": input_schema, "Output": output_schema}},
    })
