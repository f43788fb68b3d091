"""Everything that queues is bounded: job submissions past `max_pending_jobs` get 503 with Retry-After,
and `Prefer: wait` holds no worker thread (past `max_waiting` waiters it answers at once, unfinished)."""
from __future__ import annotations

import base64

import pytest

from segany.server.dialects.replicate_seed import MODEL_VERSION

SLOW_INPUT = {"points_per_side": 32, "points_per_batch": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.fixture(scope="module")
def bounded(start_server):
    with start_server(max_pending_jobs=1, max_waiting=1, job_workers=1) as live:
        yield live


def test_submissions_past_the_bound_get_503_with_retry_after(bounded, image_bytes):
    image = "data:image/png;base64," + base64.b64encode(image_bytes).decode()
    body = {"version": MODEL_VERSION, "input": {"image": image, **SLOW_INPUT}}
    with bounded.client() as client:
        first = client.post("/v1/predictions", json=body)
        assert first.status_code == 201, first.text
        refused = client.post("/v1/predictions", json=body)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) >= 1 and "jobs" in refused.text
        canceled = client.post(f"/v1/predictions/{first.json()['id']}/cancel")
        assert canceled.status_code == 200
