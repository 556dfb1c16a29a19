"""``tokend serve`` run the way tests/support/services.ExampleProcess runs a script: that
helper passes the port and host as PORT and HOST, tokend reads TOKEND_PORT and TOKEND_HOST."""

from __future__ import annotations

import os
import sys

from service.cli import run

if __name__ == "__main__":
    env = {**os.environ, "TOKEND_PORT": os.environ["PORT"], "TOKEND_HOST": os.environ["HOST"]}
    sys.exit(run(["serve"], env))
