"""docker-compose.yaml and docker/Dockerfile: valid Compose, and consistent with the project.

Runs without Docker. The file is checked against the official Compose Specification JSON schema,
vendored in ``tests/fixtures/compose-spec.json`` from the Go module
``github.com/compose-spec/compose-go/v2@v2.9.1`` (``schema/compose-spec.json``), the compose-go
version that Docker Compose v2.40.3 validates with. Like Compose, the test validates after YAML
anchors/merge keys and ``${VAR:-default}`` interpolation are resolved (with an empty environment,
so the defaults in the file are what is checked).

Cross-file checks: every ``CITIBIKES_*`` name is one the project reads; the pipeline settings the
containers get make ``load_settings`` pick the replay feed (and the live one with
``CITIBIKES_FEED=live``); the Airflow connections parse; addresses agree between services; the
service commands parse with the project's own CLI parser; images are pinned.

Where the ``docker compose`` plugin works, ``docker compose config`` must accept the file too,
and its rendering must match the model these tests check.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import pytest
import yaml
from jsonschema import Draft7Validator

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SCHEMA_FILE = ROOT / "tests" / "fixtures" / "compose-spec.json"

PROJECT_SERVICES = ("replay", "init", "s3-init", "consumer", "airflow")
"""Services that run the project image and get the shared pipeline environment."""

AIRFLOW_SETTINGS = {
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__PARALLELISM": "4",
    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
}
"""The same Airflow settings as the non-Docker stack (the folders differ: container paths)."""

GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")

# -- Compose interpolation -----------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^{}$]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)


def interpolate_string(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-x}``, ``${VAR-x}``, ``${VAR:?e}``, ``${VAR:+x}``."""

    def sub(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if match.group("invalid") is not None:
            raise AssertionError(f"unsupported interpolation in {text!r} at {match.start()}")
        name = match.group("braced") or match.group("named")
        value, op, arg = env.get(name), match.group("op"), match.group("arg") or ""
        unset_or_empty = value is None or value == ""
        if op in (":-", "-"):
            return arg if (unset_or_empty if op == ":-" else value is None) else value
        if op in (":?", "?"):
            if unset_or_empty if op == ":?" else value is None:
                raise AssertionError(f"required variable {name} is unset: {arg}")
            return value
        if op in (":+", "+"):
            return "" if (unset_or_empty if op == ":+" else value is None) else arg
        return value or ""

    return _VARIABLE.sub(sub, text)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate_string(node, env)
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    return node


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The file as Compose sees it: anchors and merge keys resolved, then interpolated."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    return interpolate(raw, env or {})


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "write environment as a mapping (NAME: value), as the rest of the file does"
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def pipeline_env(services: Mapping[str, Any]) -> dict[str, str]:
    """The environment the pipeline code sees in the airflow container."""
    return environment(services["airflow"])


def image_project_dir() -> str:
    """Where docker/Dockerfile puts the project (its last WORKDIR)."""
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), re.M)
    assert workdirs, "docker/Dockerfile sets no WORKDIR for the project folder"
    return workdirs[-1].rstrip("/")


# -- the Compose Specification -------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any], validator: Draft7Validator) -> None:
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


def test_schema_check_rejects_invalid_files(compose: dict[str, Any], validator: Draft7Validator) -> None:
    """Control: the vendored schema really constrains services (it is not an empty schema)."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["kafka"]["helthcheck"] = broken["services"]["kafka"].pop("healthcheck")
    broken["services"]["airflow"]["depends_on"]["kafka"]["condition"] = "service_ready"
    broken["services"]["s3"]["ports"] = "7070:7070"
    paths = {tuple(e.absolute_path) for e in validator.iter_errors(broken)}
    assert ("services", "kafka") in paths
    assert ("services", "airflow", "depends_on") in paths  # a oneOf (list or mapping): reported here
    assert ("services", "s3", "ports") in paths


def test_healthcheck_durations_are_go_durations(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for key in ("interval", "timeout", "start_period", "start_interval"):
            value = (service.get("healthcheck") or {}).get(key)
            if value is not None:
                assert GO_DURATION.match(str(value)), f"{name}.healthcheck.{key}={value!r} is not a duration like 10s"


def test_interpolation_helper_follows_compose_rules() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate_string("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $$SET $SET", env) == "x d  d $SET x"
    assert interpolate_string("${SET:+y}${UNSET:+y}", env) == "y"
    with pytest.raises(AssertionError):
        interpolate_string("${UNSET:?needed}", env)


# -- images --------------------------------------------------------------------------------------


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"service {name} has no image: name it (project services share one built image)"
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"service {name}: image {image!r} has no tag; pin a version"
        assert tag != "latest", f"service {name}: image {image!r} uses latest; pin a version"
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"


def test_project_services_share_one_built_image(services: dict[str, Any]) -> None:
    images = {services[name]["image"] for name in PROJECT_SERVICES}
    assert len(images) == 1, f"project services use different images: {images}"
    for name in PROJECT_SERVICES:
        build = services[name].get("build")
        assert build, f"service {name} needs the build section, or `up` would try to pull {images}"
        assert build == {"context": ".", "dockerfile": "docker/Dockerfile"}, build
    assert (ROOT / "docker" / "Dockerfile").is_file()


def test_dockerfile_base_image_matches_the_airflow_the_project_pins() -> None:
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert bases == ["apache/airflow:3.3.2-python3.11"], bases
    version = bases[0].split(":")[1].split("-")[0]
    assert metadata.version("apache-airflow") == version, "the virtualenv's Airflow differs from the image's"
    constraints = ROOT / "constraints.txt"
    if constraints.exists():
        lines = [line.strip() for line in constraints.read_text().splitlines()]
        pins = [line for line in lines if re.match(r"^apache-airflow\s*==", line, re.I)]
        assert not pins or pins == [f"apache-airflow=={version}"], f"constraints.txt pins {pins}, image has {version}"
        bad = [line for line in lines if line.startswith("-e") or " @ file:" in line or line.startswith("citibikes")]
        assert not bad, f"constraints.txt must not name the project itself (pip rejects it as a constraint): {bad}"


def dockerignore_patterns() -> set[str]:
    return {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")}


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = dockerignore_patterns()
    for must in (".venv", ".state", ".git"):
        assert must in ignored, f".dockerignore must exclude {must}"


def test_build_context_has_what_the_dockerfile_installs() -> None:
    """Every COPY source exists, and the files `pip install -e` needs are not ignored."""
    ignored = dockerignore_patterns()
    copies = re.findall(r"^COPY\s+(?!--from)(.+)$", DOCKERFILE.read_text(), re.M)
    assert copies, "docker/Dockerfile copies nothing"
    for line in copies:
        parts = [p for p in line.split() if not p.startswith("--")]
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"docker/Dockerfile copies {source}, which is not in the repository"
            assert source.rstrip("/") not in ignored, f"docker/Dockerfile copies {source}, but .dockerignore excludes it"
    for needed in ("requirements.txt", "constraints.txt", "pyproject.toml", "README.md", "include", "config"):
        assert (ROOT / needed).exists(), f"{needed} is missing: the image build needs it"
        assert needed not in ignored, f".dockerignore excludes {needed}, which the image build needs"
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert readme is None or readme.group(1) not in ignored
    assert image_project_dir() == "/opt/citibikes"


# -- services ------------------------------------------------------------------------------------


def test_kafka_is_a_single_kraft_node(services: dict[str, Any]) -> None:
    env = environment(services["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_NODE_ID"] == "1"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    for name in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                 "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR"):
        assert env[name] == "1", f"{name} must be 1 on a single broker"
    listeners = dict(item.split("://", 1) for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://", 1) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols) and set(advertised) <= set(listeners)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert "kafka:9092" in advertised.values(), "containers reach the broker at kafka:9092"
    host_side = [a for a in advertised.values() if a.startswith("localhost:")]
    assert host_side, "advertise a localhost:<port> listener for clients on the host"
    published = {str(p).rsplit(":", 1)[-1] for p in services["kafka"].get("ports", [])}
    assert host_side[0].split(":")[1] in published, "publish the host listener's port"
    assert any(str(v).endswith(":/var/lib/kafka/data") for v in services["kafka"]["volumes"])
    assert env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"


@pytest.mark.parametrize("name", ["kafka", "s3", "replay", "consumer", "airflow"])
def test_long_running_services_have_healthchecks(services: dict[str, Any], name: str) -> None:
    check = services[name].get("healthcheck") or {}
    assert not check.get("disable"), f"{name} healthcheck is disabled"
    test = check.get("test")
    assert test and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name} needs a healthcheck test"


def test_kafka_healthcheck_uses_the_broker_tools(services: dict[str, Any]) -> None:
    command = " ".join(services["kafka"]["healthcheck"]["test"][1:])
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in command and "localhost:9092" in command


def test_dependencies_start_things_in_order(services: dict[str, Any]) -> None:
    def conditions(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert conditions("airflow") == {
        "kafka": "service_healthy",
        "s3": "service_healthy",
        "replay": "service_started",
        "init": "service_completed_successfully",
        "s3-init": "service_completed_successfully",
    }
    assert conditions("init") == {"kafka": "service_healthy"}
    assert conditions("consumer") == {"kafka": "service_healthy", "init": "service_completed_successfully"}
    assert conditions("s3-init") == {"s3": "service_healthy"}
    for one_shot in ("init", "s3-init"):
        assert services[one_shot].get("restart") == "no", f"{one_shot} runs once"


def test_service_commands_parse_with_the_project_cli(services: dict[str, Any]) -> None:
    from citibikes.cli import build_parser

    parser = build_parser()
    for name in ("replay", "init", "consumer"):
        service = services[name]
        assert service["entrypoint"] == ["/usr/bin/dumb-init", "--"], (
            f"{name}: the Airflow image's entrypoint would run `airflow {' '.join(service['command'])}`")
        command = service["command"]
        assert command[0] == "citibikes"
        parser.parse_args(command[1:])  # argparse exits (SystemExit) on an unknown command or option
    replay = parser.parse_args(services["replay"]["command"][1:])
    assert (replay.host, replay.port) == ("0.0.0.0", 8765)
    consume = parser.parse_args(services["consumer"]["command"][1:])
    assert consume.log_file == "" and not consume.test_mode, "the container logs to stdout and runs for good"
    assert services["airflow"]["command"] in ("standalone", ["standalone"])
    assert "entrypoint" not in services["airflow"], "airflow keeps the image's entrypoint (db check, user setup)"


def test_consumer_serves_its_metrics_port_and_shares_its_store_with_airflow(services: dict[str, Any]) -> None:
    """The healthcheck reads the port the consumer serves; the store is on a named volume that the
    airflow container (dashboard, alerts DAG) mounts at the same place."""
    from citibikes.config import load_settings

    settings = load_settings(environment(services["consumer"]))
    assert f"127.0.0.1:{settings.consumer_metrics_port}/metrics" in " ".join(services["consumer"]["healthcheck"]["test"])
    mounts = {target: source for source, target, *_ in (str(v).split(":") for v in services["consumer"]["volumes"])}
    [(target, volume)] = [(t, s) for t, s in mounts.items() if Path(settings.live_store).is_relative_to(t)]
    assert not volume.startswith((".", "/", "~")), f"the store {settings.live_store} must be on a named volume"
    assert f"{volume}:{target}" in [str(v) for v in services["airflow"]["volumes"]]


def test_s3_init_script_is_python(services: dict[str, Any]) -> None:
    command = services["s3-init"]["command"]
    assert command[:2] == ["python", "-c"]
    compile(command[2], "s3-init", "exec")
    assert "CITIBIKES_LAKE_URI" in command[2]


def test_bind_mounts_exist_and_match_the_image_layout(services: dict[str, Any]) -> None:
    project = image_project_dir()
    binds = {}
    for volume in services["airflow"]["volumes"]:
        source, target, *mode = str(volume).split(":")
        if source.startswith("."):
            # dags/ and plugins/ may be absent in a fresh clone while empty (Docker then creates them).
            if source not in ("./dags", "./plugins"):
                assert (ROOT / source).is_dir(), f"bind mount source {source} does not exist"
            assert mode == ["ro"], f"{source} is for live editing only; mount it read-only"
            binds[source.removeprefix("./")] = target
    assert binds == {name: f"{project}/{name}" for name in ("dags", "plugins", "include", "config")}
    env = environment(services["airflow"])
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == binds["dags"]
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == binds["plugins"]


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if not source.startswith((".", "/", "~")):
                used.add(source)
    assert used == declared, f"used {sorted(used)}, declared {sorted(declared)}"
    targets = [str(v).split(":")[1] for v in compose["services"]["airflow"]["volumes"]]
    assert "/opt/airflow" in targets, "keep Airflow's home (metadata DB, logs) in a named volume"


def test_host_ports_do_not_collide(services: dict[str, Any]) -> None:
    published = [str(p).rsplit(":", 2)[-2] for s in services.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published)), published
    assert "8080" in published


# -- the pipeline's settings ---------------------------------------------------------------------


def known_project_names() -> set[str]:
    """CITIBIKES_* names the project knows: literals in config.py, and any name under include/ or config/."""
    names = set(re.findall(r"""["'](CITIBIKES_[A-Z0-9_]+)["']""", (ROOT / "include/citibikes/config.py").read_text()))
    for folder in ("include", "config"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".yaml", ".yml") and ".egg-info" not in str(path):
                names.update(re.findall(r"\bCITIBIKES_[A-Z0-9_]+", path.read_text(errors="replace")))
    return names


def test_every_citibikes_name_is_one_the_project_reads() -> None:
    used = set(re.findall(r"\bCITIBIKES_[A-Z0-9_]+", COMPOSE_FILE.read_text()))  # comments included
    unknown = used - known_project_names()
    assert not unknown, (f"docker-compose.yaml uses {sorted(unknown)}, which nothing under include/ or config/ "
                         "reads; rename to the project's names (include/citibikes/config.py)")


def test_project_services_get_the_same_pipeline_environment(services: dict[str, Any]) -> None:
    def pipeline_part(name: str) -> dict[str, str]:
        env = environment(services[name])
        return {k: v for k, v in env.items() if not k.startswith("AIRFLOW")}

    reference = pipeline_part("airflow")
    for name in PROJECT_SERVICES:
        assert pipeline_part(name) == reference, f"{name} has a different pipeline environment than airflow"
    for required in ("CITIBIKES_FEED", "CITIBIKES_KAFKA_BOOTSTRAP", "CITIBIKES_LAKE_URI", "CITIBIKES_S3_ENDPOINT_URL",
                     "CITIBIKES_S3_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "CITIBIKES_STATE_DIR",
                     "PIPELINE_INTERVAL", "LOG_LEVEL", "CITIBIKES_REPLAY_URL"):
        assert reference.get(required), f"{required} is missing from the shared pipeline environment"
    assert "CITIBIKES_SYSTEMS_FILE" not in reference, "a fixed systems file would make CITIBIKES_FEED useless"


def test_airflow_settings_are_those_of_the_local_stack(services: dict[str, Any]) -> None:
    env = environment(services["airflow"])
    assert {k: env.get(k) for k in AIRFLOW_SETTINGS} == AIRFLOW_SETTINGS
    # In a container the API server must listen on all interfaces for the published port to work.
    assert env["AIRFLOW__API__HOST"] == "0.0.0.0"
    port = env["AIRFLOW__API__PORT"]
    assert any(str(p).endswith(f":{port}") for p in services["airflow"]["ports"])
    assert f"127.0.0.1:{port}/" in " ".join(services["airflow"]["healthcheck"]["test"])


def test_addresses_agree_between_services(services: dict[str, Any]) -> None:
    env = pipeline_env(services)
    host, _, port = env["CITIBIKES_KAFKA_BOOTSTRAP"].partition(":")
    assert host == "kafka" and f"kafka:{port}" in environment(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]

    endpoint = urlparse(env["CITIBIKES_S3_ENDPOINT_URL"])
    s3_env = environment(services["s3"])
    assert endpoint.hostname == "s3" and endpoint.port == int(s3_env.get("VGW_PORT", ":7070").rsplit(":", 1)[1])
    assert s3_env["ROOT_ACCESS_KEY_ID"] == env["AWS_ACCESS_KEY_ID"]
    assert s3_env["ROOT_SECRET_ACCESS_KEY"] == env["AWS_SECRET_ACCESS_KEY"]
    assert s3_env.get("VGW_REGION", "us-east-1") == env["CITIBIKES_S3_REGION"]
    assert s3_env["VGW_HEALTH"] in " ".join(services["s3"]["healthcheck"]["test"])

    lake = urlparse(env["CITIBIKES_LAKE_URI"])
    assert lake.scheme == "s3" and lake.netloc and lake.path.strip("/")

    replay = urlparse(env["CITIBIKES_REPLAY_URL"])
    assert replay.hostname == "replay" and replay.port == 8765 and replay.path in ("", "/")
    assert f":{replay.port}/citibike/gbfs.json" in " ".join(services["replay"]["healthcheck"]["test"])


def test_airflow_connections_parse_and_agree_with_the_pipeline_settings(services: dict[str, Any]) -> None:
    env = environment(services["airflow"])
    connections = {k: json.loads(v) for k, v in env.items() if k.startswith("AIRFLOW_CONN_")}
    assert set(connections) == {"AIRFLOW_CONN_KAFKA_DEFAULT", "AIRFLOW_CONN_CITIBIKES_LAKE",
                                 "AIRFLOW_CONN_CITIBIKES_ALERTS_WATCHER"}

    kafka = connections["AIRFLOW_CONN_KAFKA_DEFAULT"]
    assert kafka == {"conn_type": "kafka", "extra": {"bootstrap.servers": env["CITIBIKES_KAFKA_BOOTSTRAP"]}}
    watcher = connections["AIRFLOW_CONN_CITIBIKES_ALERTS_WATCHER"]
    assert watcher["extra"]["bootstrap.servers"] == env["CITIBIKES_KAFKA_BOOTSTRAP"]

    lake = connections["AIRFLOW_CONN_CITIBIKES_LAKE"]
    assert lake["conn_type"] == "aws"
    assert (lake["login"], lake["password"]) == (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    assert lake["extra"] == {
        "endpoint_url": env["CITIBIKES_S3_ENDPOINT_URL"],
        "region_name": env["CITIBIKES_S3_REGION"],
        "lake_uri": env["CITIBIKES_LAKE_URI"],
    }


def test_connections_are_those_the_local_stack_derives(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same connections as `citibikes up` builds from the same settings (citibikes.stack.airflow)."""
    stack_airflow = pytest.importorskip("citibikes.stack.airflow")
    from citibikes.config import load_settings

    env = environment(services["airflow"])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, env[name])
    settings = load_settings(pipeline_env(services))
    assert json.loads(env["AIRFLOW_CONN_CITIBIKES_LAKE"]) == stack_airflow.lake_connection(settings)
    local = stack_airflow.airflow_env(settings, port=8080, base={})
    for name in ("AIRFLOW_CONN_KAFKA_DEFAULT", "AIRFLOW_CONN_CITIBIKES_ALERTS_WATCHER"):
        assert json.loads(env[name]) == json.loads(local[name]), name
    for name, value in AIRFLOW_SETTINGS.items():
        assert local.get(name) == value, f"the local stack sets {name}={local.get(name)!r}, compose {value!r}"


def test_lake_uri_is_one_the_lake_accepts(services: dict[str, Any]) -> None:
    filesystem = pytest.importorskip("citibikes.lake.filesystem")
    location = filesystem.parse_lake_uri(pipeline_env(services)["CITIBIKES_LAKE_URI"])
    assert (location.scheme, location.bucket) == ("s3", "citibikes-lake")


def test_image_versions_match_the_local_stack(services: dict[str, Any]) -> None:
    """Docker and non-Docker paths run the same Kafka and versitygw versions."""
    kafka = pytest.importorskip("citibikes.stack.kafka")
    s3 = pytest.importorskip("citibikes.stack.s3")
    assert services["kafka"]["image"] == f"apache/kafka:{kafka.KAFKA_VERSION}"
    assert services["s3"]["image"] == f"versity/versitygw:{s3.VERSITYGW_VERSION}"
    endpoint = urlparse(pipeline_env(services)["CITIBIKES_S3_ENDPOINT_URL"])
    assert endpoint.port == s3.DEFAULT_PORT
    assert pipeline_env(services)["CITIBIKES_S3_REGION"] == s3.DEFAULT_REGION


def test_airflow_accepts_the_connection_json(services: dict[str, Any]) -> None:
    connection_module = pytest.importorskip("airflow.models.connection")
    env = environment(services["airflow"])
    for key in ("AIRFLOW_CONN_KAFKA_DEFAULT", "AIRFLOW_CONN_CITIBIKES_LAKE", "AIRFLOW_CONN_CITIBIKES_ALERTS_WATCHER"):
        conn_id = key.removeprefix("AIRFLOW_CONN_").lower()
        conn = connection_module.Connection.from_json(env[key], conn_id=conn_id)
        assert conn.conn_type == json.loads(env[key])["conn_type"]
        assert conn.extra_dejson == json.loads(env[key])["extra"]


def test_container_settings_select_the_replay_feed_by_default(services: dict[str, Any]) -> None:
    from citibikes.config import load_settings

    env = pipeline_env(services)
    assert env["CITIBIKES_FEED"] == "replay"
    settings = load_settings(env)
    assert settings.systems_file.name == "systems.replay.yaml"
    assert settings.systems and all(
        s.discovery_url.startswith(env["CITIBIKES_REPLAY_URL"] + "/") for s in settings.systems
    ), [s.discovery_url for s in settings.systems]
    assert settings.kafka.bootstrap == "kafka:9092"
    assert settings.lake_uri == env["CITIBIKES_LAKE_URI"]
    assert settings.s3_endpoint_url == env["CITIBIKES_S3_ENDPOINT_URL"]
    assert settings.s3_region == env["CITIBIKES_S3_REGION"]
    assert str(settings.state_dir) == env["CITIBIKES_STATE_DIR"] == f"{image_project_dir()}/.state"
    assert (settings.interval_s, settings.log_level) == (60, "INFO")


def test_citibikes_feed_live_switches_the_containers_to_the_live_feed() -> None:
    from citibikes.config import load_settings

    live = load_compose({"CITIBIKES_FEED": "live", "PIPELINE_INTERVAL": "120", "LOG_LEVEL": "DEBUG"})
    env = pipeline_env(live["services"])
    settings = load_settings(env)
    assert settings.systems_file.name == "systems.yaml"
    assert not any(s.discovery_url.startswith(env["CITIBIKES_REPLAY_URL"]) for s in settings.systems)
    assert (settings.interval_s, settings.log_level) == (120, "DEBUG")


# -- the real Compose implementation, where installed ----------------------------------------------


def _compose_plugin() -> str | None:
    """Why `docker compose` cannot be used here, or None when it can."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    try:
        result = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker compose version` failed: {exc}"
    if result.returncode != 0:
        first_line = ((result.stderr or result.stdout).strip().splitlines() or [""])[0][:200]
        return f"the docker compose plugin is not installed ({first_line})"
    return None


COMPOSE_MISSING = _compose_plugin()


def _compose_env() -> dict[str, str]:
    """The test process's environment without the variables the file interpolates (use its defaults)."""
    interpolated = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))
    return {k: v for k, v in os.environ.items() if k not in interpolated and not k.startswith("COMPOSE_")}


@pytest.mark.skipif(COMPOSE_MISSING is not None, reason=f"docker compose unavailable: {COMPOSE_MISSING}")
def test_docker_compose_config_accepts_the_file() -> None:
    result = subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
                            cwd=ROOT, env=_compose_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "level=warning" not in result.stderr, result.stderr


@pytest.mark.skipif(COMPOSE_MISSING is not None, reason=f"docker compose unavailable: {COMPOSE_MISSING}")
def test_docker_compose_renders_the_model_these_tests_check(services: dict[str, Any]) -> None:
    result = subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), "config", "--format", "json"],
                            cwd=ROOT, env=_compose_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)["services"]
    assert set(rendered) == set(services)
    for name, service in services.items():
        assert environment(rendered[name]) == environment(service), name
        assert rendered[name]["image"] == service["image"], name
