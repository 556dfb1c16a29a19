"""djangorestframework-simplejwt as most Python teams run it: one Django project in a file.

Settings live in code; the database is SQLite at ``$BENCH_DB``. ``SIMPLEJWT_ROTATE=1``
turns on ``ROTATE_REFRESH_TOKENS`` and ``BLACKLIST_AFTER_ROTATION`` (the token_blacklist
app is installed in both variants, as it is wherever logout exists, so every refresh
also checks the blacklist). Library defaults otherwise: HS256 with SECRET_KEY.

    python -m bench.peers.simplejwt_app setup N TOKEN_FILE   # migrate, a user, N tokens
    gunicorn -w 1 bench.peers.simplejwt_app:application      # serve

Routes: POST /api/token/ (TokenObtainPairView), POST /api/token/refresh/
(TokenRefreshView), GET /healthz.
"""

from __future__ import annotations

import os
import sys

import django
from django.conf import settings

ROTATE = os.environ.get("SIMPLEJWT_ROTATE", "1") == "1"

settings.configure(
    DEBUG=False,
    SECRET_KEY=os.environ.get("SIMPLEJWT_SECRET", "bench-secret-" + "k" * 40),
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    USE_TZ=True,
    INSTALLED_APPS=[
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "rest_framework",
        "rest_framework_simplejwt",
        "rest_framework_simplejwt.token_blacklist",
    ],
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
    ],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("BENCH_DB", "simplejwt.sqlite3"),
        }
    },
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    REST_FRAMEWORK={"UNAUTHENTICATED_USER": None},
    SIMPLE_JWT={
        "ROTATE_REFRESH_TOKENS": ROTATE,
        "BLACKLIST_AFTER_ROTATION": ROTATE,
        "UPDATE_LAST_LOGIN": False,
    },
)
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView  # noqa: E402


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [
    path("api/token/", TokenObtainPairView.as_view()),
    path("api/token/refresh/", TokenRefreshView.as_view()),
    path("healthz", healthz),
]

application = get_wsgi_application()


def setup(n: int, token_file: str) -> None:
    """Migrate, create one user and write ``n`` refresh tokens (outstanding), one a line."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from rest_framework_simplejwt.tokens import RefreshToken

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("bench", password="correct horse battery")
    with open(token_file, "w") as fh:
        for _ in range(n):
            fh.write(f"{RefreshToken.for_user(user)}\n")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "setup":
        sys.exit("usage: python -m bench.peers.simplejwt_app setup N TOKEN_FILE")
    setup(int(sys.argv[2]), sys.argv[3])
