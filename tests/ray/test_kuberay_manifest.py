"""deploy/kuberay/rayservice.yaml: its Serve config builds the application `segany serve --ray` runs."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segany.errors import InvalidInput

pytest.importorskip("ray.serve", reason="Ray Serve is the optional extra segany[ray]")

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kuberay" / "rayservice.yaml"


def _rayservice() -> dict:
    documents = list(yaml.safe_load_all(MANIFEST.read_text()))
    return next(d for d in documents if d["kind"] == "RayService")


def _deployments(app) -> dict:
    """Deployment name -> deployment, walking the bound application's arguments (Ray's own attributes)."""
    found, stack = {}, [app]
    while stack:
        deployment = stack.pop()._bound_deployment
        found[deployment.name] = deployment
        stack.extend(arg for arg in deployment._replica_config.init_args if hasattr(arg, "_bound_deployment"))
    return found


def test_the_manifest_builds_the_segany_application(tmp_path, monkeypatch):
    from segany.server.ray.app import build

    service = _rayservice()
    assert service["apiVersion"] == "ray.io/v1"
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert serve_config["proxy_location"] == "HeadOnly"
    (application,) = serve_config["applications"]
    module, _, function = application["import_path"].partition(":")
    assert (module, function) == ("segany.server.ray.app", "build")
    args = dict(application["args"], data_dir=str(tmp_path))  # the manifest's /data is not on this machine
    deployments = _deployments(build(args))
    assert set(deployments) == {"SeganyIngress", "SeganyBackend"}
    backend = deployments["SeganyBackend"]
    assert backend.ray_actor_options["num_cpus"] == args["replica_cpus"]
    scaling = backend._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (1, 4, 2)
    assert deployments["SeganyIngress"].ray_actor_options["num_cpus"] == 0


def test_an_unknown_key_is_named():
    from segany.server.ray.app import build

    with pytest.raises(InvalidInput) as error:
        build({"replicaz": 2})
    assert error.value.field == "replicaz"
