"""The local stack fails with one clear line: missing tools, busy ports, bad downloads."""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import stack
from deploy.settings import Settings
from deploy.stack import kafka, postgres, process
from deploy.stack.errors import StackError
from tests.support.ports import free_port


def test_a_busy_port_names_the_variable_to_change_and_who_holds_it(tmp_path: Path) -> None:
    """Often a stack of another checkout, or of this one before it moved (its pid files
    no longer name it): the message says which process to stop."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(StackError, match=rf"port {port} .* set LATTICE_KAFKA_PORT") as err:
            kafka.start(tmp_path, port=port, partitions=1)
    assert f"in use by pid {os.getpid()} (" in str(err.value)
    # This process's command line (pytest's, or an xdist worker's `python -c ...`).
    program = Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode()
    assert f"({program} " in str(err.value)


def test_missing_java_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kafka" / "libs").mkdir(parents=True)
    (tmp_path / "kafka" / "libs" / "kafka_2.13-4.4.0.jar").write_bytes(b"")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(StackError, match=r"`java` is not on PATH: install Java 17"):
        kafka.start(tmp_path, port=free_port(2), partitions=1)


def test_missing_maven_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(StackError, match=r"`mvn` is not on PATH: install Maven"):
        kafka.ensure_jars(kafka.KafkaPaths(tmp_path / "kafka"))


def test_a_failed_maven_resolution_points_at_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    mvn = fake_bin / "mvn"
    mvn.write_text("#!/bin/sh\necho 'Could not resolve org.apache.kafka:kafka_2.13' >&2\nexit 1\n")
    mvn.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}")
    with pytest.raises(StackError, match=r"Maven could not resolve .* \(see .*mvn\.log\)"):
        kafka.ensure_jars(kafka.KafkaPaths(tmp_path / "kafka"))
    assert "Could not resolve" in (tmp_path / "kafka" / "mvn.log").read_text()


def test_a_stale_pid_file_is_not_a_running_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    pid_file.write_text("999999999\n")
    assert process.running_pid(pid_file, "owner") is None
    assert process.stop(pid_file, "owner") is False
    assert not pid_file.exists()


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A live process of someone else's, as a pid reused after a reboot would name."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def test_a_pid_file_naming_a_process_that_reused_the_pid_is_stale(
    tmp_path: Path, stranger: subprocess.Popen[bytes]
) -> None:
    pid_file = tmp_path / "broker.pid"
    pid_file.write_text(f"{stranger.pid}\n")
    assert process.running_pid(pid_file, str(tmp_path / "server.properties")) is None
    assert process.stop(pid_file, str(tmp_path / "server.properties"), timeout=1) is False
    assert stranger.poll() is None, "stop signalled a process that is not ours"
    assert not pid_file.exists()


def test_a_process_of_ours_is_found_and_stopped(tmp_path: Path) -> None:
    owner = str(tmp_path / "server.properties")
    pid_file = tmp_path / "broker.pid"
    pid = process.spawn(
        [sys.executable, "-c", "import time; time.sleep(60)", owner],
        log_file=tmp_path / "log",
        pid_file=pid_file,
    )
    assert process.running_pid(pid_file, owner) == pid
    assert process.stop(pid_file, owner, timeout=10) is True
    assert process.running_pid(pid_file, owner) is None


def test_a_postmaster_pid_naming_a_stranger_neither_runs_nor_is_signalled(
    tmp_path: Path, stranger: subprocess.Popen[bytes]
) -> None:
    paths = postgres.PgPaths(tmp_path / "pg")
    paths.data.mkdir(parents=True)
    paths.pid.write_text(f"{stranger.pid}\n{paths.data}\n")
    assert postgres.is_running(tmp_path) is False
    assert postgres.stop(tmp_path) is False  # pg_ctl stop would SIGINT the stranger
    assert stranger.poll() is None


def test_a_postmaster_whose_folder_was_moved_is_still_ours(tmp_path: Path) -> None:
    """The repository moved while the server ran: its command names the old data path,
    its working directory (a postmaster's is its data directory) the new one. Taking it
    for a stranger would delete the live server's postmaster.pid, which makes PostgreSQL
    shut down, and start a second one on its port."""
    paths = postgres.PgPaths(tmp_path / "pg")
    paths.data.mkdir(parents=True)
    # A postmaster's command names its data folder (`-D`), by the path it had then.
    server = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "-D", "/old/place/pg/data"],
        cwd=paths.data,
        start_new_session=True,
    )
    # Someone's shell left in the folder, holding a pid a stale file names: not the server.
    shell = subprocess.Popen(["sleep", "60"], cwd=paths.data, start_new_session=True)
    try:
        paths.pid.write_text(f"{server.pid}\n/old/place/pg/data\n")
        assert postgres.is_running(tmp_path) is True
        assert process.running_pid(paths.pid, paths.owner) == server.pid
        paths.pid.write_text(f"{shell.pid}\n/old/place/pg/data\n")
        assert postgres.is_running(tmp_path) is False
        assert postgres.stop(tmp_path) is False
        assert shell.poll() is None, "stop signalled a shell that is not the server"
    finally:
        for proc in (server, shell):
            proc.kill()
            proc.wait()


def test_cluster_ids_never_look_like_an_option() -> None:
    ids = [kafka.new_cluster_id() for _ in range(2000)]  # about 30 would start with '-'
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)


def test_jars_are_resolved_again_unless_complete_for_this_pom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy cut short leaves some jars and no stamp; a new Kafka version in the pom
    changes the stamp: either way Maven runs again, and the jars move in whole."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "calls"
    mvn = fake_bin / "mvn"
    mvn.write_text(
        "#!/bin/sh\n"
        f"echo run >> {calls}\n"
        'for a in "$@"; do case "$a" in -Dkafka.libs=*) d="${a#-Dkafka.libs=}";; esac; done\n'
        'mkdir -p "$d" && touch "$d/kafka_2.13-4.4.0.jar" "$d/kafka-clients-4.4.0.jar"\n'
    )
    mvn.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:/usr/bin:/bin")  # ours first: mkdir, touch too
    pom = tmp_path / "pom.xml"
    pom.write_text("<project>4.4.0</project>")
    monkeypatch.setattr(kafka, "POM", pom)
    paths = kafka.KafkaPaths(tmp_path / "kafka")
    paths.libs.mkdir(parents=True)
    (paths.libs / "kafka_2.13-4.4.0.jar").write_bytes(b"")  # a copy cut short

    kafka.ensure_jars(paths)
    kafka.ensure_jars(paths)
    assert calls.read_text().count("run") == 1
    # A first run may take minutes: it says what it is doing, once.
    said = capsys.readouterr().err
    assert said.count("fetching the broker's jars with Maven") == 1, said
    assert (paths.libs / "kafka-clients-4.4.0.jar").exists()
    assert not (paths.root / "libs.partial").exists()

    pom.write_text("<project>4.5.0</project>")
    kafka.ensure_jars(paths)
    assert calls.read_text().count("run") == 2


def test_two_stack_commands_on_one_folder_take_turns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make demo` and `make test` at once must not both start a broker (the loser's
    would run on untracked): the second waits for the first."""
    settings = Settings(home=tmp_path)
    with (tmp_path / "stack.lock").open("a") as first:
        fcntl.flock(first, fcntl.LOCK_EX)
        second = threading.Thread(target=stack.down, args=(settings,))
        second.start()
        second.join(timeout=1.0)
        assert second.is_alive(), "the second command did not wait for the first"
    second.join(timeout=30)
    assert not second.is_alive()
    assert "waiting for another `lattice stack` command" in capsys.readouterr().err


def test_the_folders_above_the_servers_files_are_passable_not_listable(tmp_path: Path) -> None:
    """As root the server runs as another user, who must reach its files through their
    parents (`/root` among them): passing through is enough, listing them is not given."""
    deep = tmp_path / "home" / "me" / "repo" / "pg"
    deep.mkdir(parents=True)
    (tmp_path / "home" / "me").chmod(0o700)
    postgres._open_path_to(deep)
    assert stat.S_IMODE((tmp_path / "home" / "me").stat().st_mode) == 0o711


def test_jars_linked_from_another_home_without_a_stamp_are_replaced_not_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests link a private broker's libs to the stack's; jars resolved before the stamp
    existed are resolved again for this home, and the linked folder is left alone."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "mvn").write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in -Dkafka.libs=*) d="${a#-Dkafka.libs=}";; esac; done\n'
        'mkdir -p "$d" && touch "$d/kafka_2.13-4.4.0.jar"\n'
    )
    (fake_bin / "mvn").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:/usr/bin:/bin")
    shared = tmp_path / "shared" / "libs"
    shared.mkdir(parents=True)
    (shared / "kafka_2.13-4.3.0.jar").write_bytes(b"")
    paths = kafka.KafkaPaths(tmp_path / "kafka")
    paths.root.mkdir()
    paths.libs.symlink_to(shared)

    kafka.ensure_jars(paths)

    assert not paths.libs.is_symlink()
    assert (paths.libs / "kafka_2.13-4.4.0.jar").exists()
    assert (shared / "kafka_2.13-4.3.0.jar").exists()
