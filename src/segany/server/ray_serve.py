"""`segany serve --ray [ADDRESS] --replicas N`: the same HTTP application, served by Ray Serve replicas.

Two deployments make one application (see docs/scale-out.md):

- `SeganyBackend` (`segany.server.ray.backend`): N model replicas, one CPU (or GPU) each by default, spread
  over the cluster's nodes. Each builds the server application (`segany.server.app.create_app`) from the
  same settings `segany serve` would use and answers every API the single-process server does.
- `SeganyIngress` (`segany.server.ray.ingress`): one light replica on the head node, behind Ray Serve's
  proxy on --host/--port (head node only), that routes each request to the replica holding its image's
  embedding and turns lost replicas into retries or 503s with Retry-After.

With --min-replicas / --max-replicas, Ray Serve scales the model replicas between those bounds, aiming at
--target-ongoing-requests requests in flight per replica. The job store of the asynchronous dialects is one
SQLite file in --data-dir, which must be a path every node shares. Ray is the optional extra `segany[ray]`;
segany (and the weights) must be installed on every node.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any

APP_NAME = "segany"
HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray's built-in resource of the head node
INGRESS_MAX_ONGOING = 1000  # the ingress only waits on replicas; the replicas' queues do the limiting


def add_ray_serve_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Ray Serve (segany[ray])")
    group.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                       help="serve through Ray Serve: ADDRESS of a cluster ('auto': the one this machine is in), or "
                            "no ADDRESS to start a local instance")
    group.add_argument("--replicas", type=int, default=1, help="replicas, each holding its own models")
    group.add_argument("--min-replicas", type=int, default=None,
                       help="autoscaling lower bound (with --max-replicas; default: fixed --replicas)")
    group.add_argument("--max-replicas", type=int, default=None, help="autoscaling upper bound")
    group.add_argument("--target-ongoing-requests", type=float, default=2.0,
                       help="autoscaling: requests in flight per replica to aim for (a CPU replica micro-batches "
                            "a few at once; more only queue)")
    group.add_argument("--upscale-delay-s", type=float, default=10.0,
                       help="autoscaling: how long load must stay high before a replica is added")
    group.add_argument("--downscale-delay-s", type=float, default=300.0,
                       help="autoscaling: how long load must stay low before a replica (and its cache) is dropped")
    group.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica")
    group.add_argument("--replica-gpus", type=float, default=None,
                       help="GPUs per replica (default: 1 when --device is cuda, else 0)")
    group.add_argument("--ray-num-cpus", type=int, default=None,
                       help="CPUs of a local instance (default: all of this machine's)")


def deployment_options(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    """Keyword arguments of `serve.deployment` for the replica counts and resources in `args`."""
    from segany.errors import InvalidInput

    if args.replicas < 1:
        raise InvalidInput(f"replicas must be at least 1, got {args.replicas}", "replicas")
    gpus = args.replica_gpus
    if gpus is None:
        gpus = 1.0 if (settings.device or "").startswith("cuda") else 0.0
    options: dict[str, Any] = {
        "name": "SeganyBackend",
        "ray_actor_options": {"num_cpus": args.replica_cpus, "num_gpus": gpus},
        # The engine queues and micro-batches requests itself; let it see as many as it would accept.
        "max_ongoing_requests": settings.max_queue,
    }
    if args.min_replicas is None and args.max_replicas is None:
        options["num_replicas"] = args.replicas
        return options
    low = args.min_replicas if args.min_replicas is not None else 1
    high = args.max_replicas if args.max_replicas is not None else max(low, args.replicas)
    if not 0 <= low <= high or high < 1:
        raise InvalidInput(f"need 0 <= min-replicas <= max-replicas and max-replicas >= 1, got {low}, {high}",
                           "min_replicas")
    options["autoscaling_config"] = {
        "min_replicas": low, "max_replicas": high, "initial_replicas": min(max(args.replicas, low), high),
        "target_ongoing_requests": args.target_ongoing_requests,
        "upscale_delay_s": args.upscale_delay_s, "downscale_delay_s": args.downscale_delay_s,
    }
    return options


def shared_settings(settings: Any) -> Any:
    """`settings` with the job store's folder made absolute here, so every replica opens the same database."""
    if settings.data_dir:
        from pathlib import Path

        return settings.with_(data_dir=str(Path(settings.data_dir).expanduser().resolve()))
    from segany.server.settings import default_data_dir

    return settings.with_(data_dir=str(default_data_dir()))


def build_application(settings: Any, options: dict[str, Any]) -> Any:
    """The bound Serve application: the ingress (pinned to the head node) in front of the model replicas."""
    from ray import serve

    from segany.server.ray.backend import SeganyBackend
    from segany.server.ray.ingress import SeganyIngress

    backend = serve.deployment(SeganyBackend, **options).bind(dataclasses.asdict(settings))
    ingress = serve.deployment(
        SeganyIngress, name="SeganyIngress", num_replicas=1, max_ongoing_requests=INGRESS_MAX_ONGOING,
        ray_actor_options={"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}})
    return ingress.bind(backend, settings.max_image_pixels, settings.request_timeout_s)


def serve_on_ray(args: argparse.Namespace) -> int:
    """Deploy and serve until interrupted (Ctrl-C or SIGTERM); returns the exit status."""
    from segany.ray_cluster import connect, import_ray, loopback_only
    from segany.errors import InvalidInput, MissingExtra
    from segany.server.settings import settings_from

    try:
        settings = shared_settings(settings_from(args))
        options = deployment_options(args, settings)
        ray = import_ray(local_instance=loopback_only(args.ray))
        from ray import serve
    except (InvalidInput, MissingExtra) as error:
        print(f"segany serve: error: {error}", file=sys.stderr)
        return 2
    except ImportError as error:
        print(f"segany serve: error: {MissingExtra('ray', 'ray[serve]', 'Serving on Ray')} ({error})", file=sys.stderr)
        return 2

    started_here = connect(None if args.ray == "local" else args.ray, args.ray_num_cpus, verbose=args.verbose)
    _stop_on_sigterm()
    try:
        # One HTTP entry point, on the head node: worker nodes need no open port (and on one test machine
        # their proxies would all want the same one).
        serve.start(proxy_location="HeadOnly", http_options={"host": settings.host, "port": settings.port})
        serve.run(build_application(settings, options), name=APP_NAME, route_prefix="/")
        count = options.get("num_replicas") or f"{options['autoscaling_config']['min_replicas']}.." \
                                                f"{options['autoscaling_config']['max_replicas']}"
        print(f"segany serve: http://{settings.host}:{settings.port} on Ray Serve with {count} replica(s); "
              "Ctrl-C stops", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        try:
            serve.delete(APP_NAME)
            serve.shutdown()
        finally:
            if started_here:
                ray.shutdown()


def _stop_on_sigterm() -> None:
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
