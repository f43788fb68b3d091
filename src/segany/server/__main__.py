"""`python -m segany.server [options]`: the same as `segany serve`."""
from __future__ import annotations

import argparse
import sys

from segany.server.launch import serve
from segany.server.settings import add_settings_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segany.server", description="Serve segany over HTTP.")
    add_settings_arguments(parser)
    return serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
