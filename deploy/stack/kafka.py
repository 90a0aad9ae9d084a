"""A real single-node Apache Kafka broker (KRaft, combined broker + controller) on loopback.

The jars come from Maven Central through `deploy/kafka/pom.xml`; data, logs and the pid
file live under `<home>/kafka/`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from deploy import kafka_options
from deploy.stack import process
from deploy.stack.errors import StackError

POM = Path(__file__).resolve().parent.parent / "kafka" / "pom.xml"
STAMP = ".pom.sha256"  # in libs/: the pom.xml whose jars these are
LOG4J = POM.parent / "log4j2.properties"

SERVER_PROPERTIES = """\
# Written by `lattice stack up`; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
auto.create.topics.enable=false
num.partitions={partitions}
offsets.topic.num.partitions=6
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Allows short LATTICE_PROJECTOR_SESSION_TIMEOUT_MS (the fault tests kill projectors often).
group.min.session.timeout.ms=1000
log.retention.ms=-1
"""


@dataclass(frozen=True)
class KafkaPaths:
    """Where the local broker keeps its jars, data, config, log and pid."""

    root: Path

    @property
    def libs(self) -> Path:
        return self.root / "libs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.root / "server.properties"

    @property
    def log(self) -> Path:
        return self.root / "broker.log"

    @property
    def pid(self) -> Path:
        return self.root / "broker.pid"

    @property
    def owner(self) -> str:
        """The argument that tells our broker's process from one that reused its pid."""
        return str(self.config.resolve())


def _require_tool(name: str, advice: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"`{name}` is not on PATH: {advice}")
    return path


def ensure_jars(paths: KafkaPaths) -> None:
    """Resolve the broker's jars with Maven unless those of this pom.xml are there. They
    are copied into a side folder and moved in whole, with a stamp of the pom: a copy cut
    short (Ctrl-C) or a new Kafka version in the pom is resolved again, never half used."""
    stamp = hashlib.sha256(POM.read_bytes()).hexdigest()
    if _stamp_of(paths.libs) == stamp:
        return
    mvn = _require_tool("mvn", "install Maven (apt-get install maven) to fetch the Kafka jars")
    paths.root.mkdir(parents=True, exist_ok=True)
    partial = paths.root / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    mvn_log = paths.root / "mvn.log"
    # Minutes on a first run with an empty Maven cache, and silent: say what is going on.
    print(
        f"kafka      fetching the broker's jars with Maven (once; log: {mvn_log})",
        file=sys.stderr,
        flush=True,
    )
    with mvn_log.open("wb") as out:
        result = subprocess.run(
            [
                mvn,
                "-B",
                "-q",
                "-f",
                str(POM),
                f"-Dkafka.libs={partial.resolve()}",
                "dependency:copy-dependencies",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if result.returncode != 0 or not any(partial.glob("kafka_2.13-*.jar")):
        shutil.rmtree(partial, ignore_errors=True)
        raise StackError(
            f"Maven could not resolve the Kafka broker jars (see {mvn_log}): "
            "check that Maven Central is reachable and run `make stack` again"
        )
    (partial / STAMP).write_text(stamp + "\n")
    if paths.libs.is_symlink():  # another home's jars (tests share them): leave those be
        paths.libs.unlink()
    else:
        shutil.rmtree(paths.libs, ignore_errors=True)
    partial.rename(paths.libs)


def _stamp_of(libs: Path) -> str | None:
    try:
        return (libs / STAMP).read_text().strip()
    except FileNotFoundError:
        return None


def _require_java() -> str:
    return _require_tool(
        "java", "install Java 17 or newer (apt-get install openjdk-17-jre-headless)"
    )


def _java(paths: KafkaPaths, main: str, *args: str, long_lived: bool = False) -> list[str]:
    """The JVM command line. Short-lived JVMs (the storage tool, the private brokers of
    tests) stop at the quick C1 compiler: they start ~1 s sooner. A long-lived broker
    (`lattice stack up`: tests, demo, benchmarks) also gets C2, which takes CPU in its
    first minute and then serves each produce and fetch with less of it: on two cores
    shared with the receiver and projectors, that is what counts."""
    java = _require_java()
    compiler = [] if long_lived else ["-XX:TieredStopAtLevel=1"]
    return [
        java,
        "-Xms256m",
        "-Xmx1g",
        "-XX:+UseG1GC",
        *compiler,
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J}",
        "-cp",
        f"{paths.libs.resolve()}/*",
        main,
        *args,
    ]


def new_cluster_id() -> str:
    """A random KRaft cluster id (base64 of a UUID, as Kafka's own tool makes them) that
    does not start with `-`: the storage tool would read such an id as an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _format_storage(paths: KafkaPaths) -> None:
    if (paths.data / "meta.properties").exists():
        return
    cluster_id = new_cluster_id()
    result = subprocess.run(
        _java(
            paths,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(paths.config.resolve()),
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(
            f"formatting Kafka storage in {paths.data} failed: "
            f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}"
        )


def start(
    home: Path,
    *,
    port: int,
    partitions: int,
    timeout: float = 60.0,
    long_lived: bool = False,
    extra_properties: str = "",
) -> bool:
    """Start the broker unless it already runs; wait until it answers. True if started.
    `long_lived`: a broker that will serve for a while (see `_java`). `extra_properties`:
    lines added to its server.properties, a later key winning (a secured listener, say)."""
    paths = KafkaPaths(home / "kafka")
    if process.running_pid(paths.pid, paths.owner) is not None:
        wait_ready(f"127.0.0.1:{port}", timeout=timeout, log=paths.log)
        return False
    controller_port = port + 1
    process.require_free_port(port, "Kafka", "LATTICE_KAFKA_PORT")
    process.require_free_port(controller_port, "the Kafka controller", "LATTICE_KAFKA_PORT")
    _require_java()  # before Maven: without Java the jars are of no use
    ensure_jars(paths)
    paths.data.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(
        SERVER_PROPERTIES.format(
            port=port,
            controller_port=controller_port,
            data=paths.data.resolve(),
            partitions=partitions,
        )
        + extra_properties
    )
    _format_storage(paths)
    pid = process.spawn(
        _java(paths, "kafka.Kafka", str(paths.config.resolve()), long_lived=long_lived),
        log_file=paths.log,
        pid_file=paths.pid,
    )
    wait_ready(f"127.0.0.1:{port}", timeout=timeout, log=paths.log, started=pid)
    return True


def is_running(home: Path) -> bool:
    """True when the local broker's process is alive."""
    paths = KafkaPaths(home / "kafka")
    return process.running_pid(paths.pid, paths.owner) is not None


def stop(home: Path) -> bool:
    """Stop the local broker; True if one was running."""
    paths = KafkaPaths(home / "kafka")
    return process.stop(paths.pid, paths.owner, timeout=60.0)


def wait_ready(
    bootstrap: str, *, timeout: float, log: Path | None = None, started: int | None = None
) -> None:
    """Poll the broker for cluster metadata until it answers or `timeout` passes; fail at
    once if the process `started` (its pid) ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if started is not None and process.exited(started):
            detail = process.tail(log) if log else ""
            raise StackError(f"the Kafka broker exited while starting; its log ends:\n{detail}")
        if process.run_coroutine(lambda: broker_answers(bootstrap)):
            return
        time.sleep(0.25)
    where = f" (log: {log})" if log else ""
    raise StackError(f"Kafka at {bootstrap} did not answer within {timeout:.0f} s{where}")


async def broker_answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when the broker at `bootstrap` returns metadata with at least one broker."""
    from aiokafka import AIOKafkaClient
    from aiokafka.errors import KafkaError

    client = AIOKafkaClient(
        **kafka_options.options(),
        bootstrap_servers=bootstrap,
        request_timeout_ms=int(timeout * 1000),
    )
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # "Unable to connect" is the expected answer while starting
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        return bool(client.cluster.brokers())
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await client.close()
        quiet.setLevel(level)
