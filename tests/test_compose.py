"""docker-compose.yml and Dockerfile, checked with the real docker-compose parser.

`docker-compose config` validates and normalises the file without a Docker engine. Its output
is YAML; PyYAML is not a dependency of ours, so the YAML is read with PyYAML where it is
importable, else with the Python interpreter that runs docker-compose (which needs PyYAML).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
KEK_VAR = "TOKEND_KEY_ENCRYPTION_KEY"
TEST_KEK = "dGVzdC1rZXktZW5jcnlwdGlvbi1rZXktMzItYnl0ZXM="

# The commands the test suite runs natively; the containers must run the same ones.
EXPECTED_COMMANDS = {
    "api": ["tokend", "serve"],
    "workers": ["tokend", "work"],
    "migrate": ["tokend", "db", "upgrade"],
}

YAML_TO_JSON = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"


def _docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.fail(
            "docker-compose is not on the PATH: .ci/run installs it "
            "(DEBIAN_FRONTEND=noninteractive apt-get install -y docker-compose)",
            pytrace=False,
        )
    return path


def _run_config(tmp_path: Path, kek: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env.pop(KEK_VAR, None)
    if kek is not None:
        env[KEK_VAR] = kek
    # An empty env file, so that a developer's .env cannot change the outcome.
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    return subprocess.run(
        [
            _docker_compose(),
            "-f",
            str(COMPOSE_FILE),
            "--project-directory",
            str(ROOT),
            "--env-file",
            str(env_file),
            "config",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def _yaml_interpreter(compose: str) -> list[str]:
    """The interpreter from docker-compose's `#!` line (it has PyYAML, compose needs it)."""
    with open(compose, "rb") as script:
        first = script.readline(512).decode("utf-8", "replace").strip()
    if not first.startswith("#!") or "python" not in first:
        pytest.fail(
            f"cannot read docker-compose's YAML output: PyYAML is not importable here and "
            f"{compose} is not a Python script",
            pytrace=False,
        )
    return shlex.split(first[2:])


def _parse_yaml(text: str) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        interpreter = _yaml_interpreter(_docker_compose())
        done = subprocess.run(
            [*interpreter, "-c", YAML_TO_JSON],
            input=text,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
    else:
        data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    done = _run_config(tmp_path_factory.mktemp("compose"), TEST_KEK)
    assert done.returncode == 0, f"docker-compose config failed:\n{done.stderr}"
    return _parse_yaml(done.stdout)


def _services(config: dict[str, Any]) -> dict[str, Any]:
    services = config["services"]
    assert isinstance(services, dict)
    return services


def _as_argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_services_exist(config: dict[str, Any]) -> None:
    assert set(_services(config)) >= {"redis", "postgres", "migrate", "api", "workers"}


def test_commands_match_the_native_ones(config: dict[str, Any]) -> None:
    services = _services(config)
    for name, argv in EXPECTED_COMMANDS.items():
        assert _as_argv(services[name]["command"]) == argv, name
        assert "build" in services[name], name


def test_redis_persists_with_aof(config: dict[str, Any]) -> None:
    redis = _services(config)["redis"]
    assert redis["image"].startswith("redis:7")
    argv = _as_argv(redis["command"])
    assert "--appendonly" in argv
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert any(str(v).split(":")[1] == "/data" for v in redis["volumes"])


def test_postgres(config: dict[str, Any]) -> None:
    postgres = _services(config)["postgres"]
    assert postgres["image"].startswith("postgres:16")
    env = postgres["environment"]
    assert env["POSTGRES_DB"] == env["POSTGRES_USER"] == env["POSTGRES_PASSWORD"] == "tokend"
    assert postgres["volumes"]


def test_healthchecks(config: dict[str, Any]) -> None:
    services = _services(config)
    tests = {n: services[n]["healthcheck"]["test"] for n in ("redis", "postgres", "api", "workers")}
    assert "redis-cli" in tests["redis"] and "ping" in tests["redis"]
    assert "pg_isready" in " ".join(tests["postgres"])
    assert "http://127.0.0.1:8080/healthz" in " ".join(tests["api"])
    assert tests["workers"][1:] == ["tokend", "work", "--check"]


def test_start_order(config: dict[str, Any]) -> None:
    services = _services(config)
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "workers"):
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name


def test_environment(config: dict[str, Any]) -> None:
    services = _services(config)
    assert any(p["target"] == 8080 for p in services["api"]["ports"])
    for name in ("api", "workers", "migrate"):
        env = services[name]["environment"]
        assert env["TOKEND_REDIS_URL"] == "redis://redis:6379/0", name
        assert env["TOKEND_DATABASE_URL"] == (
            "postgresql+asyncpg://tokend:tokend@postgres:5432/tokend"
        ), name
        assert env["TOKEND_ISSUER"] == "http://127.0.0.1:8080", name
        assert env[KEK_VAR] == TEST_KEK, name


def test_key_encryption_key_is_required(tmp_path: Path) -> None:
    done = _run_config(tmp_path, None)
    assert done.returncode != 0
    assert KEK_VAR in done.stderr
    assert "urandom" in done.stderr  # the message says how to make one


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("python:3.11-slim")
    cmd = [rest for keyword, rest in instructions if keyword == "CMD"][-1]
    assert json.loads(cmd) == ["tokend", "serve"]
    user = [rest for keyword, rest in instructions if keyword == "USER"][-1]
    assert user.split(":")[0] not in {"root", "0"}
    assert "8080" in [rest for keyword, rest in instructions if keyword == "EXPOSE"][-1].split()
    env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    assert "TOKEND_HOST=0.0.0.0" in env.split()
    assert any(kw == "RUN" and "pip install" in rest for kw, rest in instructions)
    assert not any("-e " in rest for kw, rest in instructions if kw == "RUN")
