#!/usr/bin/env bash
# Everything the test suite needs besides the virtualenv, run by `make test` before the
# checks: PostgreSQL and Redis on 127.0.0.1 (started when down), docker-compose (the
# compose test runs `docker-compose config`), a PostgreSQL role and the `test` database,
# and the npm packages of tests/oidc_provider. Idempotent, quick when everything is there,
# needs no stdin. Works from any directory.
#
# Writes the detected TOKEND_TEST_POSTGRES_URL to $TOKEND_TEST_ENV_FILE (default
# .venv/test.env), which `make test` reads before pytest; a TOKEND_TEST_POSTGRES_URL already
# in the environment is kept as it is.
set -euo pipefail
exec </dev/null

cd "$(dirname "${BASH_SOURCE[0]}")/.."

ENV_FILE=${TOKEND_TEST_ENV_FILE:-.venv/test.env}

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root for: $*"
    fi
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    local i
    for ((i = 0; i < seconds; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    die "$what did not come up within ${seconds}s"
}

redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }

# PostgreSQL on 127.0.0.1:5432
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    command -v pg_ctlcluster >/dev/null 2>&1 || die "PostgreSQL is not installed (apt-get install postgresql)"
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    [ -n "$version" ] || die "no PostgreSQL cluster in /etc/postgresql"
    say "postgresql: starting cluster $version/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_for 30 "PostgreSQL" pg_isready -q -h 127.0.0.1 -p 5432
fi

# Redis on 127.0.0.1:6379 (a throwaway one when none runs: no snapshots, no AOF)
if ! redis_up; then
    command -v redis-server >/dev/null 2>&1 || die "Redis is not installed (apt-get install redis-server)"
    say "redis: starting a private redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    wait_for 30 "Redis" redis_up
fi

# apt_install PACKAGE: install with apt-get; on failure (an old package list) update and retry
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if ! as_root apt-get install -y -q "$1" >/dev/null; then
        say "$1: install failed, running apt-get update and retrying"
        as_root apt-get update -q >/dev/null
        as_root apt-get install -y -q "$1" >/dev/null
    fi
}

# docker-compose: only its parser is used, no engine is needed
if ! command -v docker-compose >/dev/null 2>&1; then
    say "docker-compose: installing with apt-get"
    apt_install docker-compose
    command -v docker-compose >/dev/null 2>&1 || die "docker-compose still missing after apt-get install"
fi

# Chromium for the browser tests (tests/browser drives /usr/bin/chromium with playwright-core,
# which never downloads a browser of its own)
if [ ! -x /usr/bin/chromium ]; then
    say "chromium: installing with apt-get"
    apt_install chromium
    [ -x /usr/bin/chromium ] || die "/usr/bin/chromium still missing after apt-get install chromium"
fi

# A PostgreSQL role that trust auth lets in, and the `test` database
if [ -n "${TOKEND_TEST_POSTGRES_URL:-}" ]; then
    url=$TOKEND_TEST_POSTGRES_URL
else
    role=""
    for candidate in postgres root; do
        if psql -h 127.0.0.1 -p 5432 -U "$candidate" -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
            role=$candidate
            break
        fi
    done
    [ -n "$role" ] || die "neither role postgres nor root can connect to 127.0.0.1:5432 (or set TOKEND_TEST_POSTGRES_URL)"
    if ! psql -h 127.0.0.1 -p 5432 -U "$role" -d test -Atqc 'select 1' >/dev/null 2>&1; then
        say "postgresql: creating database test"
        createdb -h 127.0.0.1 -p 5432 -U "$role" test
    fi
    url="postgresql+asyncpg://${role}@127.0.0.1:5432/test"
fi
mkdir -p "$(dirname "$ENV_FILE")"
printf 'TOKEND_TEST_POSTGRES_URL=%s\n' "$url" >"$ENV_FILE.tmp"
mv "$ENV_FILE.tmp" "$ENV_FILE"

# The real OpenID provider of the social-login tests (npm oidc-provider, locked). npm ci
# runs again only when package-lock.json is newer than the last install (npm writes
# node_modules/.package-lock.json on every install).
# The browser tests' playwright-core and @axe-core/playwright (locked) the same way;
# PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: they use the system Chromium above. The DPoP interop
# test's oauth4webapi (tests/dpop_interop, locked) too.
npm_ci() {  # npm_ci DIRECTORY WHAT
    if [ ! "$1/node_modules/.package-lock.json" -nt "$1/package-lock.json" ]; then
        say "$2: npm ci in $1 (node $(node --version))"
        (cd "$1" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
}
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    npm_ci tests/oidc_provider oidc-provider
    npm_ci tests/browser "browser tests"
    npm_ci tests/dpop_interop "DPoP interop (oauth4webapi)"
else
    say "node or npm missing: the OIDC end-to-end, browser and DPoP interop tests will be SKIPPED"
fi

say "ready (postgresql, redis, docker-compose, chromium, $url)"
