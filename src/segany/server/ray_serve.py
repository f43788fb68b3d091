"""`segany serve --ray [ADDRESS] --replicas N`: the same HTTP application, served by Ray Serve replicas.

Each replica builds the server application (`segany.server.app.create_app`) from the same settings as
`segany serve` would, runs its startup (model loading) and answers every API the single-process server does;
Ray Serve's proxy listens on --host/--port and spreads requests over the replicas. With --min-replicas /
--max-replicas, Ray Serve scales the replica count between those bounds by load. Ray is the optional extra
`segany[ray]`; segany (and the weights) must be available on every node.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any

APP_NAME = "segany"


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
                       help="autoscaling: requests in flight per replica to aim for")
    group.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica")
    group.add_argument("--replica-gpus", type=float, default=None,
                       help="GPUs per replica (default: 1 when --device is cuda, else 0)")
    group.add_argument("--ray-num-cpus", type=int, default=None,
                       help="CPUs of a local instance (default: all of this machine's)")


class SeganyReplica:
    """One Ray Serve replica: the server application built on the replica from plain settings values."""

    def __init__(self, settings_values: dict[str, Any]) -> None:
        from segany.server.settings import ServerSettings

        self.settings = ServerSettings(**settings_values)

    def __serve_build_asgi_app__(self) -> Any:
        from segany.server.app import create_app

        return create_app(self.settings)


def deployment_options(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    """Keyword arguments of `serve.deployment` for the replica counts and resources in `args`."""
    from segany.errors import InvalidInput

    if args.replicas < 1:
        raise InvalidInput(f"replicas must be at least 1, got {args.replicas}", "replicas")
    gpus = args.replica_gpus
    if gpus is None:
        gpus = 1.0 if (settings.device or "").startswith("cuda") else 0.0
    options: dict[str, Any] = {
        "name": "SeganyServer",
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
    }
    return options


def serve_on_ray(args: argparse.Namespace) -> int:
    """Deploy and serve until interrupted (Ctrl-C or SIGTERM); returns the exit status."""
    from segany.ray_cluster import connect, import_ray
    from segany.errors import InvalidInput, MissingExtra
    from segany.server.settings import settings_from

    try:
        settings = settings_from(args)
        options = deployment_options(args, settings)
        ray = import_ray(local_instance=args.ray == "local")
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
        serve.start(http_options={"host": settings.host, "port": settings.port})
        deployment = serve.deployment(serve.ingress()(SeganyReplica), **options)
        serve.run(deployment.bind(dataclasses.asdict(settings)), name=APP_NAME, route_prefix="/")
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
