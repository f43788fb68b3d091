"""Joining or starting a Ray cluster, shared by `segany batch --ray` and `segany serve --ray` (segany[ray])."""
from __future__ import annotations

import os
from typing import Any

from segany.errors import MissingExtra


def import_ray(local_instance: bool = False) -> Any:
    """The ray module, or MissingExtra naming `segany[ray]`.

    With `local_instance`, a Ray instance started by this process will listen on 127.0.0.1 only: a throwaway
    single-machine instance has no reason to be reachable from the network. Ray reads that choice when it is
    first imported, so this must run before anything else imports ray.
    """
    if local_instance:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library is a separate part of the ray package)
    except ImportError as exc:
        raise MissingExtra("ray", "ray[data,serve]", "Running on Ray") from exc
    return ray


def connect(address: str | None, num_cpus: int | None = None, verbose: bool = False) -> bool:
    """Join the cluster at `address` ("auto": the one this machine belongs to), or start a private local
    instance listening on 127.0.0.1 only. Returns True when this call started Ray (and should stop it)."""
    ray = import_ray(local_instance=address is None)
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"log_to_driver": verbose, "configure_logging": verbose, "include_dashboard": False}
    if address is None:
        ray.init(num_cpus=num_cpus, **options)
    else:
        options.pop("include_dashboard")
        ray.init(address=address, **options)
    return True
