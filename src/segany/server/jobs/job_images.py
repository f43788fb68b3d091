"""Input images of jobs: checked and stored when a job is submitted, loaded again when it runs.

An image is checked at submission so a bad one gets a 4xx instead of a failed job. Inline images (data
URIs, and plain base64 where a dialect allows it) are decoded, then kept in storage: the job records their
URL (rows stay small, and a retried job finds its image). Files of this server must exist (uploads: of the
same API key); other http(s) URLs must pass the fetch rules and are fetched when the job runs.
"""
from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

from segany.errors import InvalidImage
from segany.io.images import image_file_type
from segany.server.engine.engine import DecodedImage
from segany.server.http.image_source import ImageSource, check_url_allowed, classify, is_url, own_file_key
from segany.server.jobs.errors import StoredFileNotFound
from segany.server.jobs.service import JobService
from segany.server.jobs.store import Job
from segany.server.jobs.storage import read_owned


class PreparedImage(NamedTuple):
    value: str  # what the job records: the URL (an inline image's stored copy)
    keys: list[str]  # storage keys to tie to the job
    size_hw: tuple[int, int] | None  # None for remote URLs, fetched only when the job runs


def _stored_bytes(jobs: JobService, key: str, upload: bool, api_key_id: str | None, field: str) -> bytes:
    try:
        return read_owned(jobs.storage, key, api_key_id, upload)
    except StoredFileNotFound:
        raise InvalidImage(f"{field}: no file {key[:80]!r} on this server (expired or deleted?)", field) from None


async def prepare_image(jobs: JobService, value: Any, *, api_key_id: str | None, base_url: str, field: str,
                        plain_base64: bool = False) -> PreparedImage:
    """Check a job's input image at submission (see the module doc); returns what the job records."""
    source = classify(value, field, base_url=base_url, plain_base64=plain_base64)
    if source.kind == "stored":
        data = await asyncio.to_thread(_stored_bytes, jobs, source.key, source.upload, api_key_id, field)
        decoded = await jobs.engine.decode_image(data, field)
        return PreparedImage(source.text, [], decoded.size_hw)
    if source.kind == "url":
        await asyncio.to_thread(check_url_allowed, jobs.settings, source.text, field)
        return PreparedImage(source.text, [], None)
    data = source.inline_bytes()
    decoded = await jobs.engine.decode_image(data, field)
    suffix, content_type = image_file_type(data)
    key = await asyncio.to_thread(jobs.storage.put, data, suffix, content_type, owner=api_key_id)
    return PreparedImage(jobs.storage.url_for(key, base_url), [key], decoded.size_hw)


def load_job_image(jobs: JobService, job: Job, value: str, field: str) -> DecodedImage:
    """A job's input image, decoded (from a worker thread): from storage, or fetched by URL."""
    own = own_file_key(value, job.meta.get("base_url"))
    if own is not None:
        try:
            data = jobs.storage.get(own[0])
        except StoredFileNotFound:
            raise InvalidImage(f"{field}: the input file was deleted before the prediction ran", field) from None
        return jobs.call(jobs.engine.decode_image(data, field))
    source = ImageSource("url" if is_url(value) else "inline", value, field)
    return jobs.call(source.decode(jobs.engine))
