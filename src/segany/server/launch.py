"""`segany serve`: command-line flags (each also `SEGANY_...` in the environment) and the uvicorn run."""
from __future__ import annotations

import argparse
import logging
import re
import sys

from segany.errors import SeganyError
from segany.server.settings import ServerSettings, settings_from


_SECRET_QUERY = re.compile(r"((?:^|[?&])api_key=)[^&\s]*", re.IGNORECASE)


def redact_access_log(record: logging.LogRecord) -> bool:
    """Logging filter: `?api_key=...` in uvicorn's access lines becomes `api_key=***` (the line is kept)."""
    if isinstance(record.args, tuple):
        record.args = tuple(_SECRET_QUERY.sub(r"\1***", arg) if isinstance(arg, str) else arg for arg in record.args)
    return True


def serve(args: argparse.Namespace) -> int:
    """Run the server until interrupted; returns the process exit status."""
    try:
        settings = settings_from(args)
    except SeganyError as error:
        print(f"segany serve: {error}", file=sys.stderr)
        return 2
    return run_server(settings)


def run_server(settings: ServerSettings) -> int:
    import uvicorn

    from segany.server.app import create_app

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.api_keys and settings.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("segany.server").warning(
            "listening on %s without API keys: anyone who can reach it can use it (set --api-key)", settings.host)
    try:
        app = create_app(settings)
    except SeganyError as error:
        print(f"segany serve: {error}", file=sys.stderr)
        return 2
    # One worker process: the engine (models, cache, batching) lives in this process.
    logging.getLogger("uvicorn.access").addFilter(redact_access_log)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                timeout_graceful_shutdown=5, timeout_keep_alive=max(1, round(settings.keep_alive_s)))
    return 0
