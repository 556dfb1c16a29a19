"""docker-compose.yml, its Redis Cluster variant and Dockerfile, checked with the real
docker-compose parser.

`docker-compose config` validates and normalises the file without a Docker engine (the
cluster variant: docker-compose.yml with docker-compose.cluster.yml over it). Its output
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
CLUSTER_FILE = ROOT / "docker-compose.cluster.yml"
STANDALONE = (COMPOSE_FILE,)
CLUSTER = (COMPOSE_FILE, CLUSTER_FILE)
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


def _run_config(
    tmp_path: Path, kek: str | None, files: tuple[Path, ...] = STANDALONE
) -> subprocess.CompletedProcess[str]:
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
            *(arg for file in files for arg in ("-f", str(file))),
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


def _config(tmp_path: Path, files: tuple[Path, ...]) -> dict[str, Any]:
    done = _run_config(tmp_path, TEST_KEK, files)
    assert done.returncode == 0, f"docker-compose config failed:\n{done.stderr}"
    return _parse_yaml(done.stdout)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _config(tmp_path_factory.mktemp("compose"), STANDALONE)


@pytest.fixture(scope="module")
def cluster_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _config(tmp_path_factory.mktemp("compose-cluster"), CLUSTER)


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


@pytest.mark.parametrize("files", [STANDALONE, CLUSTER], ids=["standalone", "cluster"])
def test_key_encryption_key_is_required(tmp_path: Path, files: tuple[Path, ...]) -> None:
    done = _run_config(tmp_path, None, files)
    assert done.returncode != 0
    assert KEK_VAR in done.stderr
    assert "urandom" in done.stderr  # the message says how to make one


# --- the Redis Cluster variant (docker-compose.cluster.yml over docker-compose.yml) ----------

CLUSTER_NODES = ["redis", *(f"redis-node-{i}" for i in range(2, 7))]
CLUSTER_ENV = {
    "TOKEND_REDIS_MODE": "cluster",
    "TOKEND_REDIS_URL": "redis://redis-node-1:6379/0",
    "TOKEND_REDIS_REPLICA_ACKS": "1",
}


def _option(argv: list[str], name: str) -> str:
    assert name in argv, (name, argv)
    return argv[argv.index(name) + 1]


def test_cluster_has_six_cluster_enabled_nodes(cluster_config: dict[str, Any]) -> None:
    services = _services(cluster_config)
    enabled = [
        n for n, s in services.items() if "--cluster-enabled" in _as_argv(s.get("command", []))
    ]
    assert sorted(enabled) == sorted(CLUSTER_NODES)
    assert services["redis"]["networks"]["default"]["aliases"] == ["redis-node-1"]
    volumes = set()
    for number, name in enumerate(CLUSTER_NODES, start=1):
        node = services[name]
        argv = _as_argv(node["command"])
        assert argv[0] == "redis-server" and node["image"].startswith("redis:7"), name
        assert _option(argv, "--cluster-enabled") == "yes", name
        assert _option(argv, "--appendonly") == "yes", name
        assert _option(argv, "--cluster-config-file") == "nodes.conf", name
        # the shards that are up keep serving while one fails over
        assert _option(argv, "--cluster-require-full-coverage") == "no", name
        assert _option(argv, "--cluster-announce-hostname") == f"redis-node-{number}", name
        assert node["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"], name
        (volume,) = (v for v in node["volumes"] if str(v).split(":")[1] == "/data")
        volumes.add(str(volume).split(":")[0])
    assert len(volumes) == 6  # a volume per node: its AOF and nodes.conf


def _init_script(cluster_config: dict[str, Any]) -> str:
    init = _services(cluster_config)["redis-cluster-init"]
    assert init["entrypoint"] == ["/bin/sh", "-ec"]
    (script,) = init["command"]
    # `docker-compose config` prints `$` escaped as `$$`, as in the file
    return str(script).replace("$$", "$")


def test_cluster_init_creates_the_cluster_once(cluster_config: dict[str, Any]) -> None:
    init = _services(cluster_config)["redis-cluster-init"]
    assert init["restart"] == "no" and init["image"].startswith("redis:7")
    assert init["depends_on"] == {n: {"condition": "service_healthy"} for n in CLUSTER_NODES}
    script = _init_script(cluster_config)
    create = next(line for line in script.splitlines() if "--cluster create" in line).split()
    assert create[:3] == ["redis-cli", "--cluster", "create"]
    assert _option(create, "--cluster-replicas") == "1" and "--cluster-yes" in create
    assert "for i in 1 2 3 4 5 6" in script and "getent hosts redis-node-$i" in script
    assert "cluster_state:ok" in script  # done when every node says so; 0 if already made
    done = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_cluster_tokend_services(cluster_config: dict[str, Any], config: dict[str, Any]) -> None:
    services, standalone = _services(cluster_config), _services(config)
    for name, argv in EXPECTED_COMMANDS.items():
        assert _as_argv(services[name]["command"]) == argv, name
        env = services[name]["environment"]
        assert {k: env[k] for k in CLUSTER_ENV} == CLUSTER_ENV, name
        rest = {k: v for k, v in standalone[name]["environment"].items() if k not in CLUSTER_ENV}
        assert {k: env[k] for k in rest} == rest, name  # database, issuer, KEK as in the base
    for name in ("api", "workers"):
        depends = services[name]["depends_on"]
        assert depends["redis-cluster-init"]["condition"] == "service_completed_successfully"
        assert {k: depends[k] for k in standalone[name]["depends_on"]} == (
            standalone[name]["depends_on"]
        ), name
    assert services["migrate"]["depends_on"] == standalone["migrate"]["depends_on"]


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
