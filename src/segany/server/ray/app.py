"""The segany Serve application for declarative deployments: `import_path: segany.server.ray.app:build`.

Ray Serve config files (`serve deploy`, KubeRay's `RayService.spec.serveConfigV2`) name an application
builder and its `args`. `build(args)` makes the same application `segany serve --ray` runs: the keys of
`args` are the long options of `segany serve` with underscores (`replicas`, `max_replicas`,
`target_ongoing_requests`, `replica_cpus`, `checkpoint`, `data_dir`, ...); server options not given come
from `SEGANY_*` variables in the replicas' environment, then the defaults. See deploy/kuberay/rayservice.yaml.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from segany.errors import InvalidInput
from segany.server.ray_serve import add_ray_serve_arguments, build_application, deployment_options, shared_settings
from segany.server.settings import ServerSettings, settings_from


def build(args: Mapping[str, Any]) -> Any:
    """The bound application (ingress and model replicas) for Serve config `args`; InvalidInput names a bad key."""
    parser = argparse.ArgumentParser(add_help=False)
    add_ray_serve_arguments(parser)
    ray_options = parser.parse_args([])
    setting_names = {f.name for f in fields(ServerSettings)}
    overrides: dict[str, Any] = {}
    for key, value in args.items():
        if key in setting_names:
            overrides[key] = tuple(value) if key == "api_keys" else value
        elif key in vars(ray_options) and key not in ("ray", "ray_num_cpus"):
            setattr(ray_options, key, value)
        else:
            raise InvalidInput(f"{key}: not an option of segany serve --ray", key)
    settings = shared_settings(settings_from(None, **overrides))
    return build_application(settings, deployment_options(ray_options, settings))
