"""The options of `segany serve --ray` and the ingress's image keys; no cluster needed."""
from __future__ import annotations

import argparse
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from segany.errors import InvalidInput
from segany.io.images import image_digest, load_image
from segany.server.ray.affinity import ImageKey, affinity_key, retry_safe
from segany.server.ray_serve import add_ray_serve_arguments, deployment_options
from segany.server.settings import ServerSettings, add_settings_arguments

MAX_PIXELS = 10**7


def _options(*argv: str) -> tuple[argparse.Namespace, ServerSettings]:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    add_ray_serve_arguments(parser)
    args = parser.parse_args(["--ray", *argv])
    return args, ServerSettings(device=args.device)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((), {"num_replicas": 1, "name": "SeganyBackend", "max_ongoing_requests": 64}),
        (("--replicas", "3", "--replica-cpus", "2"), {"num_replicas": 3, "ray_actor_options": {"num_cpus": 2.0, "num_gpus": 0.0}}),
        (("--device", "cuda"), {"ray_actor_options": {"num_cpus": 1.0, "num_gpus": 1.0}}),
        (("--min-replicas", "1", "--max-replicas", "4", "--replicas", "2"),
         {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 2,
                                 "target_ongoing_requests": 2.0, "upscale_delay_s": 10.0,
                                 "downscale_delay_s": 300.0}}),
        (("--max-replicas", "3", "--target-ongoing-requests", "4", "--downscale-delay-s", "60"),
         {"autoscaling_config": {"min_replicas": 1, "max_replicas": 3, "initial_replicas": 1,
                                 "target_ongoing_requests": 4.0, "upscale_delay_s": 10.0,
                                 "downscale_delay_s": 60.0}}),
    ],
)
def test_deployment_options(argv, expected):
    args, settings = _options(*argv)
    options = deployment_options(args, settings)
    for key, value in expected.items():
        assert options[key] == value
    assert ("num_replicas" in options) != ("autoscaling_config" in options)


@pytest.mark.parametrize("argv", [("--replicas", "0"), ("--min-replicas", "3", "--max-replicas", "2")])
def test_bad_replica_counts_name_the_option(argv):
    args, settings = _options(*argv)
    with pytest.raises(InvalidInput) as error:
        deployment_options(args, settings)
    assert error.value.field in ("replicas", "min_replicas")


def _png(seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _multipart(fields: dict[str, bytes | str]) -> tuple[str, bytes]:
    boundary = "segany-test-boundary"
    parts = []
    for name, value in fields.items():
        if isinstance(value, bytes):
            head = f'Content-Disposition: form-data; name="{name}"; filename="x.png"\r\nContent-Type: image/png'
            parts.append(head.encode() + b"\r\n\r\n" + value)
        else:
            parts.append(f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode())
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body


def test_every_way_of_sending_an_image_gets_its_pixel_digest():
    png = _png(0)
    digest = image_digest(load_image(png))
    b64 = base64.b64encode(png).decode()
    ways = [
        ("application/json", json.dumps({"image": b64})),  # native, Segmind
        ("application/json", json.dumps({"image": f"data:image/png;base64,{b64}"})),
        ("application/json", json.dumps({"inputs": b64})),  # Hugging Face JSON
        ("application/json", json.dumps({"image": {"type": "base64", "value": b64}})),  # Roboflow
        ("application/json", json.dumps({"input": {"image": f"data:image/png;base64,{b64}"}})),  # Replicate
        ("image/png", png),  # Hugging Face raw bytes
        _multipart({"image": png, "prompts": "[]"}),  # native / Livepeer upload
        _multipart({"image": b64}),  # base64 as a form field
    ]
    for content_type, body in ways:
        body = body.encode() if isinstance(body, str) else body
        assert affinity_key(content_type, body, MAX_PIXELS) == ImageKey(digest, by_id=False), content_type
    assert affinity_key("image/png", _png(1), MAX_PIXELS).key != digest


def test_an_image_id_is_its_own_key_and_unreadable_requests_have_none():
    png = _png(0)
    digest = image_digest(load_image(png))
    named = affinity_key("application/json", json.dumps({"image_id": "abc", "image": "x"}).encode(), MAX_PIXELS)
    assert named == ImageKey("abc", by_id=True)  # pixels that do not decode: the id is the key
    # Pixels that decode are the key, and the id they are named by its alias.
    assert affinity_key(*_multipart({"image_id": "my-cat", "image": png}), MAX_PIXELS) == \
        ImageKey(digest, False, alias="my-cat")
    roboflow = {"image_id": "my-mug", "image": {"type": "base64", "value": base64.b64encode(png).decode()}}
    assert affinity_key("application/json", json.dumps(roboflow).encode(), MAX_PIXELS) == \
        ImageKey(digest, False, alias="my-mug")
    assert affinity_key("application/json", b'{"image_id": "my-mug"}', MAX_PIXELS) == ImageKey("my-mug", True)
    for content_type, body in [("application/json", b'{"image": "https://example.com/a.png"}'),
                               ("application/json", b'{"image": "not base64!"}'), ("application/json", b"[1, 2]"),
                               ("application/json", b"{broken"), ("image/png", b"not a png"), ("text/plain", b"hi"),
                               ("application/json", b"")]:
        assert affinity_key(content_type, body, MAX_PIXELS) is None


@pytest.mark.parametrize(("method", "path", "safe"), [
    ("GET", "/v1/predictions/abc", True), ("POST", "/v1/segment", True), ("POST", "/sam2/segment_image", True),
    ("POST", "/models/facebook/sam2.1-hiera-tiny", True), ("PUT", "/predictions/abc", True),
    ("POST", "/v1/predictions", False), ("POST", "/v1/models/meta/sam-2/predictions", False),
    ("POST", "/predictions", False), ("POST", "/v2/sam-v2-image", False), ("POST", "/v1/files", False),
])
def test_only_requests_that_cannot_run_twice_are_retried(method, path, safe):
    assert retry_safe(method, path) is safe


def test_cluster_metrics_sum_the_latest_counters_of_every_replica():
    from segany.server.ray.backend import ReplicaAnswer
    from segany.server.ray.ingress import SeganyIngress

    ingress = SeganyIngress(backend=None, max_image_pixels=MAX_PIXELS, request_timeout_s=1.0)
    for replica, node, hits, misses in [("r1", "n1", 1, 1), ("r2", "n2", 5, 2), ("r1", "n1", 3, 1)]:
        ingress.replicas[replica] = ReplicaAnswer(200, [], b"", replica, node, hits, misses)
    lines = ingress.cluster_metrics().splitlines()
    assert "segany_cluster_embedding_cache_hits_total 8" in lines  # r1's latest (3) + r2's 5
    assert "segany_cluster_embedding_cache_misses_total 3" in lines
    assert 'segany_replica_embedding_cache_hits_total{replica="r2",node="n2"} 5' in lines


def test_a_miss_is_final_only_from_the_replica_that_served_the_image():
    """A 404 for an image id is asked again unless the replica that last answered for that image gave it."""
    from segany.server.ray.ingress import SeganyIngress

    ingress = SeganyIngress(backend=None, max_image_pixels=MAX_PIXELS, request_timeout_s=1.0)
    assert not ingress.miss_is_final("my-mug", "r1")  # never served here: the router may have guessed
    ingress.remember_holder("my-mug", "r1")
    assert not ingress.miss_is_final("my-mug", "r2")  # another replica: the router did not know yet
    assert ingress.miss_is_final("my-mug", "r1")  # the holder itself evicted it
    assert not ingress.miss_is_final("my-mug", "r1")  # and is forgotten: a new upload names the holder again


def test_a_request_by_alias_is_keyed_by_the_digest_its_upload_named():
    """The router knows where a digest lives long before it learns of a brand-new alias."""
    from segany.server.ray.ingress import SeganyIngress

    ingress = SeganyIngress(backend=None, max_image_pixels=MAX_PIXELS, request_timeout_s=1.0)
    assert ingress.through_aliases(ImageKey("my-mug", True)) == ImageKey("my-mug", True)  # not taught yet
    upload = ImageKey("d1", False, alias="my-mug")
    assert ingress.through_aliases(upload) == upload
    assert ingress.through_aliases(ImageKey("my-mug", True)) == ImageKey("d1", True)
    assert ingress.through_aliases(ImageKey("d1", True)) == ImageKey("d1", True)
    assert ingress.through_aliases(None) is None
