"""Each API key keeps at most `max_upload_mb_per_key` of uploads (`POST /v1/files`): past it a 429 names the
limit, another key's allowance is its own, and deleting an upload gives its bytes back."""
from __future__ import annotations

import httpx
import pytest

KEYS = ("key-uploader", "key-other")
MIB = 2**20


@pytest.fixture(scope="module")
def quota_server(start_server):
    with start_server(api_keys=KEYS, max_upload_mb_per_key=1.0) as live:
        yield live


def _upload(live, key: str, size: int) -> httpx.Response:
    return httpx.post(f"{live.url}/v1/files", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                      files={"content": ("blob.bin", b"\0" * size, "application/octet-stream")})


def test_uploads_past_a_keys_allowance_get_429_and_deleting_gives_it_back(quota_server):
    first = _upload(quota_server, KEYS[0], 600_000)
    assert first.status_code == 201, first.text[:200]
    refused = _upload(quota_server, KEYS[0], 600_000)
    assert refused.status_code == 429, refused.text[:200]
    assert "max_upload_mb_per_key" in refused.json()["detail"]
    other = _upload(quota_server, KEYS[1], 600_000)  # the second key's uploads count for it alone
    assert other.status_code == 201, other.text[:200]
    fits = _upload(quota_server, KEYS[0], MIB - 600_000)  # exactly up to the limit
    assert fits.status_code == 201, fits.text[:200]
    assert _upload(quota_server, KEYS[0], 1).status_code == 429
    for response in (first, fits):
        deleted = httpx.delete(f"{quota_server.url}/v1/files/{response.json()['id']}", timeout=30,
                               headers={"Authorization": f"Bearer {KEYS[0]}"})
        assert deleted.status_code == 204
    again = _upload(quota_server, KEYS[0], 900_000)
    assert again.status_code == 201, again.text[:200]
    assert httpx.get(again.json()["urls"]["get"], headers={"Authorization": f"Bearer {KEYS[0]}"},
                     timeout=30).json()["size"] == 900_000
