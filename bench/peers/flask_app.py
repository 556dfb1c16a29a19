"""flask-jwt-extended with a Redis blocklist: the usual Flask setup, no rotation.

``/refresh`` takes the refresh token in ``Authorization: Bearer``, checks the blocklist
(one Redis GET of ``$FLASK_REDIS_PREFIX:bl:<jti>``) and answers a new access token.
Library defaults otherwise (HS256).

    python -m bench.peers.flask_app tokens N TOKEN_FILE   # N refresh tokens, one a line
    gunicorn -w 1 bench.peers.flask_app:app               # serve
"""

from __future__ import annotations

import os
import sys
from typing import Any

import redis
from flask import Flask, Response, jsonify
from flask_jwt_extended import (
    JWTManager,
    create_access_token,
    create_refresh_token,
    get_jwt_identity,
    jwt_required,
)

PREFIX = os.environ.get("FLASK_REDIS_PREFIX", "flask-bench")

app = Flask(__name__)
app.config["JWT_SECRET_KEY"] = os.environ.get("FLASK_JWT_SECRET", "bench-secret-" + "k" * 40)
jwt_manager = JWTManager(app)
blocklist = redis.Redis.from_url(os.environ.get("TOKEND_REDIS_URL", "redis://127.0.0.1:6379/0"))


@jwt_manager.token_in_blocklist_loader
def revoked(jwt_header: dict[str, Any], jwt_payload: dict[str, Any]) -> bool:
    return blocklist.get(f"{PREFIX}:bl:{jwt_payload['jti']}") is not None


@app.post("/refresh")
@jwt_required(refresh=True)
def refresh() -> Response:
    return jsonify(access_token=create_access_token(identity=get_jwt_identity()))


@app.get("/healthz")
def healthz() -> Response:
    return jsonify(ok=True)


def tokens(n: int, token_file: str) -> None:
    with app.app_context(), open(token_file, "w") as fh:
        for i in range(n):
            fh.write(create_refresh_token(identity=f"user-{i}") + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "tokens":
        sys.exit("usage: python -m bench.peers.flask_app tokens N TOKEN_FILE")
    tokens(int(sys.argv[2]), sys.argv[3])
