"""The deployment files agree with the code: they parse, and their settings, commands,
ports, probes and projector names are ones Lattice actually has (no Docker engine here)."""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.cli import build_parser, handler_of
from deploy.settings import ENV_PREFIX, Settings
from ingest.app import create_app
from projectors import catalog

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
RECEIVER_PORT = 8000


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _k8s() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in _docs(path)]


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in _k8s() if doc.get("kind") == kind]


def _containers() -> Iterator[dict[str, Any]]:
    for doc in _by_kind("Deployment") + _by_kind("Job"):
        yield from doc["spec"]["template"]["spec"]["containers"]


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return compose


def _env_names() -> set[str]:
    names: set[str] = set()
    for doc in _by_kind("ConfigMap"):
        names |= set(doc["data"])
    for doc in _by_kind("Secret"):
        names |= set(doc["stringData"])
    for container in _containers():
        names |= {env["name"] for env in container.get("env", [])}
        names |= {
            env["valueFrom"]["secretKeyRef"]["key"]
            for env in container.get("env", [])
            if "valueFrom" in env
        }
    for service in _compose()["services"].values():
        if str(service.get("image", "")).startswith("lattice"):
            names |= set(service.get("environment", {}))
    names |= set(re.findall(r"\b(LATTICE_[A-Z_]+)=", (DEPLOY / "Dockerfile").read_text()))
    return names


def _lattice_commands() -> list[list[str]]:
    commands = [list(c["args"]) for c in _containers() if c["image"] == "lattice"]
    for service in _compose()["services"].values():
        if not str(service.get("image", "")).startswith("lattice"):
            continue
        entrypoint = service.get("entrypoint")
        if entrypoint:  # ["sh", "-c", "lattice a && lattice b"]
            for part in entrypoint[-1].split("&&"):
                words = shlex.split(part)
                assert words[0] == "lattice"
                commands.append(words[1:])
        else:
            commands.append(list(service["command"]))
    cmd = re.search(r"^CMD (\[.*\])$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert cmd is not None
    commands.append(yaml.safe_load(cmd.group(1)))
    return commands


def test_every_yaml_file_parses_and_kustomize_lists_them_all() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    kinds = {doc["kind"] for doc in _k8s()}
    assert {"Deployment", "Service", "Secret", "ConfigMap", "Job"} <= kinds
    assert set(_compose()["services"]) >= {"kafka", "postgres", "receiver", "projectors"}


def test_every_lattice_env_name_is_a_setting() -> None:
    names = _env_names()
    assert "LATTICE_WEBHOOK_SECRETS" in names
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert names - fields == set()


@pytest.mark.parametrize("argv", _lattice_commands(), ids=lambda argv: " ".join(argv))
def test_every_command_is_one_the_cli_accepts(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert callable(handler_of(args))


def test_receiver_port_probes_and_routes_agree() -> None:
    routes = {route.path for route in create_app(Settings()).routes}  # type: ignore[attr-defined]
    (receiver,) = [c for c in _containers() if c["name"] == "receiver"]
    args = receiver["args"]
    assert args[:1] == ["serve"]
    assert int(args[args.index("--port") + 1]) == RECEIVER_PORT
    assert receiver["ports"][0]["containerPort"] == RECEIVER_PORT
    assert receiver["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": RECEIVER_PORT}
    assert receiver["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": RECEIVER_PORT}
    assert {"/readyz", "/healthz", "/metrics", "/webhooks/{endpoint}"} <= routes
    (service,) = _by_kind("Service")
    assert service["spec"]["ports"][0]["targetPort"] == RECEIVER_PORT
    assert f"EXPOSE {RECEIVER_PORT}" in (DEPLOY / "Dockerfile").read_text()
    compose_receiver = _compose()["services"]["receiver"]
    assert compose_receiver["ports"] == [f"{RECEIVER_PORT}:{RECEIVER_PORT}"]
    assert "--port" in compose_receiver["command"]


def test_receiver_has_a_writable_tmp_under_its_read_only_root() -> None:
    # `serve --workers N` keeps the workers' metrics in a tempfile.TemporaryDirectory.
    (deployment,) = [
        doc
        for doc in _by_kind("Deployment")
        if doc["spec"]["template"]["spec"]["containers"][0]["name"] == "receiver"
    ]
    pod = deployment["spec"]["template"]["spec"]
    (receiver,) = pod["containers"]
    assert receiver["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in receiver.get("volumeMounts", [])}
    assert "/tmp" in mounts
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_one_deployment_per_projection_within_the_partition_count() -> None:
    partitions = int(_by_kind("ConfigMap")[0]["data"]["LATTICE_PARTITIONS"])
    projectors = {}
    for doc in _by_kind("Deployment"):
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        if container["args"][0] == "project":
            projectors[container["args"][1]] = doc["spec"]["replicas"]
    assert set(projectors) == set(catalog.discover())
    assert all(1 <= replicas <= partitions for replicas in projectors.values())


def test_topic_job_replicates_three_ways() -> None:
    (job,) = _by_kind("Job")
    containers = job["spec"]["template"]["spec"]["containers"]
    (topics,) = [c for c in containers if c["args"][:2] == ["stack", "up"]]
    config = _by_kind("ConfigMap")[0]["data"]
    assert config["LATTICE_REPLICATION_FACTOR"] == "3"
    # The ConfigMap decides: a flag or an `env:` entry in the Job would quietly win over it.
    assert topics["args"] == ["stack", "up"]
    assert {e["name"] for e in topics.get("env", [])}.isdisjoint(config)
    # topics.py sets min.insync.replicas=2 and retention forever whenever RF > 1.
    source = (ROOT / "deploy/stack/topics.py").read_text()
    assert '"retention.ms": "-1"' in source
    assert '"min.insync.replicas"' in source


def test_every_projector_serves_its_metrics_to_a_scraper() -> None:
    for doc in _by_kind("Deployment"):
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        if args[0] != "project":
            continue
        port = int(args[args.index("--metrics-port") + 1])
        assert args[args.index("--metrics-host") + 1] == "0.0.0.0"
        assert {"name": "metrics", "containerPort": port} in container["ports"]
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)
    assert "--metrics-port" in _compose()["services"]["projectors"]["command"]


def test_image_is_multi_stage_non_root_with_lattice_entrypoint() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user
    assert user[-1].split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["lattice"]' in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "lattice" in project["scripts"]
    for container in _containers():
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_compose_kafka_matches_the_local_stack_version() -> None:
    pom = (DEPLOY / "kafka/pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert version is not None
    kafka = _compose()["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{version.group(1)}"
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft


def test_a_terminating_receiver_keeps_accepting_then_finishes_what_it_took() -> None:
    """Kubernetes removes a pod from the Service's endpoints while it sends SIGTERM: the
    preStop sleep keeps the port open meanwhile, and the grace period covers that sleep,
    a request's body and its append, and the producer's flush after them."""
    (receiver,) = [d for d in _by_kind("Deployment") if d["metadata"]["name"] == "lattice-receiver"]
    pod = receiver["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    defaults = Settings()
    # The sleep; a request's body and its append; the producer's flush and stop, each
    # bounded by the publish timeout (ingest/publisher.py, `_retire`).
    needed = float(command[1]) + defaults.body_timeout + 3 * defaults.publish_timeout
    assert pod["terminationGracePeriodSeconds"] >= needed


def test_no_container_is_handed_every_secret() -> None:
    """Each container names the secret keys it uses (`secretKeyRef`), never the whole
    Secret: the topics job needs the database URL, not the webhook secrets or Stripe key."""
    whole = [
        c["name"] for c in _containers() for source in c.get("envFrom", []) if "secretRef" in source
    ]
    assert whole == []
    keys = {
        c["name"]: {
            e["valueFrom"]["secretKeyRef"]["key"] for e in c.get("env", []) if "valueFrom" in e
        }
        for c in _containers()
    }
    kafka_login = {"LATTICE_KAFKA_SASL_USERNAME", "LATTICE_KAFKA_SASL_PASSWORD"}
    assert keys["receiver"] == {"LATTICE_WEBHOOK_SECRETS", *kafka_login}
    assert keys["topics"] == keys["migrate"] == {"LATTICE_DATABASE_URL", *kafka_login}
    # Every container gets the Kafka login when the Secret has one: a ConfigMap saying
    # SASL_SSL makes every command (even `migrate`) require it.
    assert all(kafka_login <= names for names in keys.values())


def test_every_pod_meets_the_restricted_pod_security_level() -> None:
    """Namespaces that enforce Kubernetes' `restricted` level refuse a pod without a
    seccomp profile; a ResourceQuota refuses a container without requests."""
    for doc in _by_kind("Deployment") + _by_kind("Job"):
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, doc
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert container["resources"]["requests"], container["name"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_a_projector_release_that_cannot_start_stops_its_rollout() -> None:
    """A new projector pod counts as available once `/readyz` (on its metrics port) says
    its projectors run, and a while without crashing: a release that cannot start (a
    wrong password, a refused migration, Kafka out of reach) leaves the old pods
    projecting."""
    projectors = [
        d for d in _by_kind("Deployment") if d["metadata"]["name"].startswith("lattice-projector")
    ]
    assert projectors
    for doc in projectors:
        assert doc["spec"]["minReadySeconds"] >= 30, doc["metadata"]["name"]
        # Never an old pod down before its replacement is ready (the default, 25 %,
        # takes one down at once from four replicas on).
        assert doc["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        probe = container["readinessProbe"]["httpGet"]
        assert probe["path"] == "/readyz"
        (port,) = [p for p in container["ports"] if p["name"] == probe["port"]]
        args = container["args"]
        assert args[args.index("--metrics-port") + 1] == str(port["containerPort"])


def test_compose_gives_each_secret_to_the_service_that_uses_it() -> None:
    services = _compose()["services"]

    def given(name: str) -> set[str]:
        return {s for s, svc in services.items() if name in (svc.get("environment") or {})}

    assert given("LATTICE_STRIPE_API_KEY") == {"projectors"}
    assert given("LATTICE_WEBHOOK_SECRETS") == {"receiver"}
    assert services["projectors"]["ports"] == ["127.0.0.1:9100:9100"]


def test_the_receivers_disruption_budget_never_blocks_a_drain() -> None:
    (budget,) = _by_kind("PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in budget["spec"]
