"""The `tokend` console script: `tokend client …` starts without loading the server.

The server's modules (SQLAlchemy, Alembic, the app) take about a second to import; a
client command needs none of them.
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> None:
    """Console entry point: ``client`` here, everything else in service.cli."""
    argv = sys.argv[1:]
    if argv[:1] == ["client"]:
        from .client_cli import add_client_parser, run_client

        parser = argparse.ArgumentParser(prog="tokend")
        add_client_parser(parser.add_subparsers(dest="command", required=True))
        sys.exit(run_client(parser.parse_args(argv), os.environ))
    from .cli import main as server_main

    server_main()
