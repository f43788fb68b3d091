"""`segany serve --ray ADDRESS`: two model replicas on two worker nodes behind one HTTP entry point.

Requests for one image reach the replica holding its embedding (the ingress keys them by pixel digest or
image_id), so the embedding cache hit rate summed over the replicas stays what one replica has; every API
dialect answers through the ingress.
"""
from __future__ import annotations

import base64
import time

import httpx
import pytest

from segany.server.dialects.replicate_seed import MODEL_VERSION
from serve_helpers import click, cluster_cache_counts, finite_scores, free_port, png_b64, ray_server

pytest.importorskip("ray.serve", reason="Ray Serve is the optional extra segany[ray]")

# Four distinct small images: quarters of two fixture photos.
IMAGES = [("chelsea.png", (0, 0, 225, 150)), ("chelsea.png", (225, 150, 451, 300)),
          ("coffee.png", (0, 0, 200, 150)), ("coffee.png", (200, 150, 400, 300))]


@pytest.fixture(scope="module")
def server(ray_cluster, tiny_checkpoint, tmp_path_factory):
    with ray_server(ray_cluster.address, free_port(), tiny_checkpoint, tmp_path_factory.mktemp("serve"),
                    "--replicas", "2", "--replica-cpus", "1", "--request-timeout-s", "60") as running:
        yield running


@pytest.mark.timeout(240)
def test_same_image_reaches_the_replica_holding_its_embedding(server, ray_cluster):
    workers = {node.node_id for node in ray_cluster.workers}
    hits0, misses0 = cluster_cache_counts(server.url)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        uploads = []
        for name, box in IMAGES:
            response = client.post("/v1/embed", json={"image": png_b64(name, box=box)})
            assert response.status_code == 200, response.text
            uploads.append((response.json()["image_id"], response.headers["x-segany-replica"],
                            response.headers["x-segany-node"]))
            time.sleep(1.5)  # let the router learn where the image went (replicas report their keys ~1/s)
        assert len({image_id for image_id, _, _ in uploads}) == 4
        assert {node for _, _, node in uploads} == workers, "new images spread over both worker nodes"
        for round_ in range(3):
            for image_id, replica, _ in uploads:
                answer = click(client, image_id, [10.0 + round_, 12.0])
                assert answer.status_code == 200, answer.text
                assert answer.headers["x-segany-replica"] == replica, "a click left the replica of its image"
                assert finite_scores(answer.json())
    hits, misses = cluster_cache_counts(server.url)
    lookups = (hits - hits0) + (misses - misses0)
    assert lookups >= 12
    assert (hits - hits0) / lookups >= 0.7  # 12 clicks all hit; the 4 uploads miss once each


@pytest.mark.timeout(240)
def test_every_dialect_answers_through_the_ingress(server):
    image = png_b64("coffee.png", box=(0, 0, 200, 150))
    raw = base64.b64decode(image)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        native = client.post("/v1/segment", files={"image": ("a.png", raw, "image/png")},
                             data={"prompts": '[{"points": [[20, 30]], "labels": [1]}]', "format": "rle"})
        assert native.status_code == 200, native.text
        image_id = native.json()["image_id"]
        again = click(client, image_id, [40.0, 20.0])  # multipart upload and JSON click: same replica
        assert again.headers["x-segany-replica"] == native.headers["x-segany-replica"]
        livepeer = client.post("/segment-anything-2", files={"image": ("a.png", raw, "image/png")},
                               data={"point_coords": "[[20, 30]]", "point_labels": "[1]"})
        assert livepeer.status_code == 200, livepeer.text
        assert livepeer.headers["x-segany-replica"] == native.headers["x-segany-replica"]
        hugging = client.post("/models/facebook/sam2.1-hiera-tiny", json={
            "inputs": image, "parameters": {"points_per_side": 2, "pred_iou_thresh": 0, "stability_score_thresh": 0}})
        assert hugging.status_code == 200, hugging.text
        assert hugging.headers["x-segany-replica"] == native.headers["x-segany-replica"]
        embedded = client.post("/sam2/embed_image", json={"image": {"type": "base64", "value": image},
                                                          "image_id": "my-mug"})
        assert embedded.status_code == 200 and embedded.json()["image_id"] == "my-mug"
        roboflow = client.post("/sam2/segment_image", json={
            "image_id": "my-mug", "format": "rle", "prompts": [{"points": [{"x": 10, "y": 10, "positive": True}]}]})
        assert roboflow.status_code == 200, roboflow.text
        assert roboflow.headers["x-segany-replica"] == embedded.headers["x-segany-replica"]
        segmind = client.post("/v1/sam-v2-image", json={"image": image, "coordinates": "[20, 30]",
                                                        "overlay_mask": False})
        assert segmind.status_code == 200 and segmind.headers["content-type"] == "image/jpeg"
        job = client.post("/v1/predictions", headers={"Prefer": "wait=60"}, json={
            "version": MODEL_VERSION, "input": {"image": f"data:image/png;base64,{image}", "points_per_side": 2,
                                                "mask_limit": 1}})
        assert job.status_code == 201, job.text
        status = client.get(f"/v1/predictions/{job.json()['id']}").json()  # any replica: the job store is shared
        assert status["status"] == "succeeded" and len(status["output"]) >= 1
        bad = client.post("/v1/segment", json={"prompts": [{"points": [[1, 2]]}]})
        assert bad.status_code in (400, 422) and bad.json()["error"]["field"] == "image"
        metrics = client.get("/metrics").text
        assert "segany_cluster_embedding_cache_hits_total" in metrics and "segany_ingress_retries_total 0" in metrics
