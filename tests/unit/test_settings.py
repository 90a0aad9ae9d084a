"""Settings: parsing of signing secrets and one-line errors naming the variable."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from deploy.cli import main
from deploy.settings import ConfigError, Settings, load_settings, parse_webhook_secrets


def test_an_endpoint_named_twice_keeps_both_secrets_for_rotation() -> None:
    parsed = parse_webhook_secrets("platform=whsec_old, platform=whsec_new,connect=whsec_c")
    assert parsed == {"platform": ("whsec_old", "whsec_new"), "connect": ("whsec_c",)}


@pytest.mark.parametrize("raw", ["platform", "platform=", "=whsec_x", "a=b,c"])
def test_malformed_secrets_are_rejected_without_echoing_them(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LATTICE_WEBHOOK_SECRETS", raw)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("LATTICE_WEBHOOK_SECRETS:")
    assert "\n" not in message
    assert "whsec_x" not in message


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        ("eu/platform=whsec_x", "endpoint name 'eu/platform'"),  # could never be routed
        ("plat\x07form=whsec_x", "endpoint name 'plat\\x07form'"),
        ("..=whsec_x", "endpoint name '..'"),  # folded away by clients: /webhooks/
        ("platform=whsec_x\udcff", "the secret of endpoint 'platform' holds a space or"),
        ("platform=whsec_x\u00a0y", "the secret of endpoint 'platform' holds a space or"),
        ("platform=whsec_x\u200by", "the secret of endpoint 'platform' holds a space or"),
    ],
)
def test_an_unroutable_endpoint_or_a_secret_that_cannot_key_an_hmac_is_refused(
    raw: str,
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Accepted, these would answer 404 to every delivery, or 500 after the HMAC could not
    be keyed: refused at start instead, in one line that does not show the secret."""
    monkeypatch.setenv("LATTICE_WEBHOOK_SECRETS", raw)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lattice: LATTICE_WEBHOOK_SECRETS: {said}")
    assert err.count("\n") == 1
    assert "whsec_x" not in err
    (tmp_path / "event.json").write_text("{}")
    sent = ["send", str(tmp_path / "event.json"), "--endpoint", "platform"]
    assert main([*sent, "--secret", "whsec_x\udcff"]) == 2
    assert capsys.readouterr().err.startswith("lattice: --secret holds a space or")


def test_serve_refuses_a_metrics_folder_it_cannot_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Else the first delivery's count fails after its record is on the log."""
    monkeypatch.setenv("LATTICE_WEBHOOK_SECRETS", "platform=whsec_x")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    missing = tmp_path / "missing"
    assert (
        err == f"lattice: PROMETHEUS_MULTIPROC_DIR={missing}: not a directory this user can write\n"
    )


def test_a_malformed_number_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATTICE_SIGNATURE_TOLERANCE", "five minutes")
    with pytest.raises(ConfigError, match=r"^LATTICE_SIGNATURE_TOLERANCE: "):
        load_settings()


def test_a_malformed_flag_names_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATTICE_POISON_RETRIES", "2")
    with pytest.raises(ConfigError, match=r"^--poison-retries: "):
        load_settings({"poison_retries": "many"})


@pytest.mark.parametrize("version", ["clover", "2025-10-29 clover", "2025-10-29.Clover"])
def test_an_api_version_stripe_would_refuse_is_named_at_start(
    version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LATTICE_STRIPE_API_VERSION", version)
    with pytest.raises(ConfigError, match=r"^LATTICE_STRIPE_API_VERSION: .* is not a Stripe API"):
        load_settings()
    for good in ("2025-10-29.clover", "2024-06-20", "2025-01-27.acacia; some_beta=v1"):
        monkeypatch.setenv("LATTICE_STRIPE_API_VERSION", good)
        assert load_settings().stripe_api_version == good


@pytest.mark.parametrize("value", ["1Pgaf", "acct_", "cus_QXg1o8vcGmoR32", "acct_1Pg af"])
def test_a_platform_account_that_is_not_an_account_id_is_named_at_start(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LATTICE_PLATFORM_ACCOUNT", value)
    with pytest.raises(ConfigError, match=r"^LATTICE_PLATFORM_ACCOUNT: .* is not a Stripe acc"):
        load_settings()
    monkeypatch.setenv("LATTICE_PLATFORM_ACCOUNT", "")
    assert load_settings().platform_account is None
    monkeypatch.setenv("LATTICE_PLATFORM_ACCOUNT", "acct_1032D82eZvKYlo2C")
    assert load_settings().platform_account == "acct_1032D82eZvKYlo2C"


def test_an_empty_ca_file_is_none_an_empty_topic_or_prefix_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Compose's `${LATTICE_KAFKA_SSL_CAFILE:-}`: not the folder "."; an empty topic or
    # group prefix must not quietly become production's default.
    monkeypatch.setenv("LATTICE_KAFKA_SSL_CAFILE", "")
    monkeypatch.setenv("LATTICE_HOME", "")
    loaded = load_settings()
    assert (loaded.kafka_ssl_cafile, loaded.home) == (None, Path(".lattice"))
    for name in ("LATTICE_TOPIC", "LATTICE_USAGE_TOPIC", "LATTICE_GROUP_PREFIX"):
        monkeypatch.setenv(name, "")
        with pytest.raises(ConfigError, match=rf"^{name}: "):
            load_settings()
        monkeypatch.delenv(name)
    with pytest.raises(ConfigError, match=r"^--topic: "):
        load_settings({"topic": ""})


def test_every_setting_is_a_flag_of_some_command() -> None:
    from deploy.cli import build_parser
    from deploy.flags import DEST_PREFIX
    from deploy.settings import Settings

    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert isinstance(choices, dict)
    commands: dict[str, argparse.ArgumentParser] = choices
    dests = {
        action.dest.removeprefix(DEST_PREFIX)
        for sub in commands.values()
        for action in sub._actions
        if action.dest.startswith(DEST_PREFIX)
    }
    assert set(Settings.model_fields) <= dests


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATTICE_TOPIC", "from.env")
    assert load_settings({"topic": "from.flag", "partitions": None}).topic == "from.flag"
    assert load_settings().topic == "from.env"
    assert load_settings().dlq_topic == "from.env.dlq"


def test_the_cli_prints_one_line_and_exits_2_on_a_bad_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LATTICE_PG_PORT", "not-a-port")
    assert main(["stack", "status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lattice: LATTICE_PG_PORT: ")
    assert err.count("\n") == 1


def test_a_missing_database_url_says_how_to_set_it() -> None:
    settings = load_settings({"database_url": None})
    if settings.database_url is not None:  # the test stack's URL is in the environment
        settings = settings.model_copy(update={"database_url": None})
    with pytest.raises(ConfigError, match="LATTICE_DATABASE_URL is not set"):
        settings.require_database_url()


def test_the_readme_documents_every_setting() -> None:
    from pathlib import Path

    from deploy.settings import ENV_PREFIX, Settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"| `{ENV_PREFIX}{name.upper()}` | `--{name.replace('_', '-')}` |" in readme


@pytest.mark.parametrize(
    "url",
    [
        "localhost:55432/lattice",  # no scheme: asyncpg's traceback, or a wait for ever
        "postgresql://user:hunter2@db:5432x/lattice",
        "postgresql://user:hunter2@db:80000/lattice",
        "mysql://user:hunter2@db/lattice",
        # A password with `/` or `#` not percent-encoded ends the address early: what is
        # left of it is the user and the password.
        "postgresql://user:hunter2/x@db:5432/lattice",
        "postgresql://user:hun#hunter2@db/lattice",
        "postgresql://user:8080/hunter2@db:5432/lattice",  # reads as a port, then a path
        "postgresql://user:2024#hunter2@db/lattice",
        "postgresql://user:hun@hunter2@127.0.0.1:5432/lattice",  # asyncpg: host `hunter2@...`
    ],
)
def test_a_database_url_that_is_not_a_libpq_url_is_one_line_without_the_password(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LATTICE_DATABASE_URL", url)
    with pytest.raises(ConfigError, match=r"^LATTICE_DATABASE_URL: ") as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)
    assert "Value error" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:55432/lattice",
        "postgres://u:p@h1:5432,h2:5433/db",
        "postgresql:///lattice?host=/var/run/postgresql",
        "postgresql://[::1]:5432/lattice",
    ],
)
def test_libpq_urls_are_accepted(url: str) -> None:
    assert load_settings({"database_url": url}).database_url == url


@pytest.mark.parametrize("bootstrap", ["127.0.0.1:90x2", "broker:0", "a:9092,,b:9092", ":9092"])
def test_a_malformed_kafka_bootstrap_names_the_flag(bootstrap: str) -> None:
    with pytest.raises(ConfigError, match=r"^--kafka-bootstrap: .* is not host:port"):
        load_settings({"kafka_bootstrap": bootstrap})


@pytest.mark.parametrize("bootstrap", ["127.0.0.1:9092", "a:9092, b:9093", "[::1]:9092", "kafka"])
def test_kafka_bootstraps_are_accepted(bootstrap: str) -> None:
    assert load_settings({"kafka_bootstrap": bootstrap}).kafka_bootstrap == bootstrap


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["serve", "--port", "80000"], "80000 is not a port from 1 to 65535"),
        (["serve", "--port", "0"], "0 is not a port from 1 to 65535"),
        (["project", "--metrics-port", "http"], "'http' is not a port number"),
    ],
)
def test_a_port_out_of_range_is_refused_by_the_parser(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert said in capsys.readouterr().err


def test_a_taken_metrics_port_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    monkeypatch.setenv("LATTICE_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/none")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["project", "--metrics-port", str(port)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"lattice: --metrics-port: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://writer:S3CRET@db:5432/lattice", "postgresql://writer:***@db:5432/lattice"),
        (
            "postgresql://u:p%40ss@h1:5432,h2:5433/db?x=1",
            "postgresql://u:***@h1:5432,h2:5433/db?x=1",
        ),
        (
            "postgresql://postgres@127.0.0.1:55432/lattice",
            "postgresql://postgres@127.0.0.1:55432/lattice",
        ),
        # libpq's parameters: the password, and a client key's.
        (
            "postgresql://db/lattice?user=w&password=S3CRET&sslmode=require",
            "postgresql://db/lattice?user=w&password=***&sslmode=require",
        ),
        (
            "postgresql://w@db/lattice?sslkey=k.pem&sslpassword=S3CRET",
            "postgresql://w@db/lattice?sslkey=k.pem&sslpassword=***",
        ),
        # A socket folder and the other parameters print as they were written.
        ("postgresql:///db?host=/tmp&password=x y", "postgresql:///db?host=/tmp&password=***"),
        # A key written percent-encoded is still the password to libpq and asyncpg.
        (
            "postgresql://db/lattice?%70assword=S3CRET&x=1",
            "postgresql://db/lattice?%70assword=***&x=1",
        ),
    ],
)
def test_a_database_url_is_printed_without_its_password(url: str, shown: str) -> None:
    from deploy.settings import without_password

    assert without_password(url) == shown


def test_a_stripe_key_read_from_a_file_loses_its_newline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATTICE_STRIPE_API_KEY", "  rk_test_51Abc\n")
    key = load_settings().stripe_api_key
    assert key is not None
    assert key.get_secret_value() == "rk_test_51Abc"


@pytest.mark.parametrize("key", ["sk_test_51A\u201d", "sk_test 51A", "sk_test_\x7f51A"])
def test_a_stripe_key_that_cannot_be_sent_is_refused_without_echoing_it(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpx refuses such a header before sending it: the hydrator took that for Stripe
    being down (or a bad record) for ever."""
    monkeypatch.setenv("LATTICE_STRIPE_API_KEY", key)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith("LATTICE_STRIPE_API_KEY: has a space")
    assert "51A" not in str(caught.value)


@pytest.mark.parametrize(
    "base", ["api.stripe.com", "http://[::1", "https://api.stripe.com:99999", "ftp://x", "https://"]
)
def test_a_stripe_api_base_that_is_not_an_http_url_is_one_line(
    base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LATTICE_STRIPE_API_BASE", base)
    with pytest.raises(ConfigError, match=r"^LATTICE_STRIPE_API_BASE: .* is not an http\(s\)://"):
        load_settings()


def test_a_stripe_api_base_in_the_clear_is_refused_unless_local(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The secret key goes in every request's header: over http:// only to loopback."""
    monkeypatch.setenv("LATTICE_STRIPE_API_BASE", "http://api.stripe.com")
    with pytest.raises(ConfigError, match=r"http:// is for a local API only; use https://"):
        load_settings()


@pytest.mark.parametrize(
    "base",
    ["https://api.stripe.com", "http://127.0.0.1:12111", "http://[::1]:80", "http://localhost:9"],
)
def test_stripe_api_bases_are_accepted(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATTICE_STRIPE_API_BASE", base)
    assert load_settings().stripe_api_base == base


def test_a_batch_wait_of_zero_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """getmany(timeout_ms=0) on an empty buffer never yields: an idle projector would spin."""
    monkeypatch.setenv("LATTICE_PROJECTOR_BATCH_WAIT_MS", "0")
    with pytest.raises(ConfigError, match=r"^LATTICE_PROJECTOR_BATCH_WAIT_MS: .*1"):
        load_settings()


def test_backfill_refuses_an_empty_endpoint_name(capsys: pytest.CaptureFixture[str]) -> None:
    """The appended records' `lattice-endpoint` header must not be empty (its schema)."""
    with pytest.raises(SystemExit) as exited:
        main(["backfill", "--since", "0", "--endpoint", " "])
    assert exited.value.code == 2
    assert "--endpoint: must not be empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("protocol", "keys"),
    [
        ("PLAINTEXT", set()),
        ("SSL", {"security_protocol", "ssl_context"}),
        (
            "SASL_PLAINTEXT",
            {"security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password"},
        ),
        (
            "SASL_SSL",
            {
                "security_protocol",
                "ssl_context",
                "sasl_mechanism",
                "sasl_plain_username",
                "sasl_plain_password",
            },
        ),
    ],
)
def test_kafka_clients_get_the_options_of_their_security_protocol(
    protocol: str, keys: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssl

    from deploy import kafka_options

    monkeypatch.setenv("LATTICE_KAFKA_SECURITY_PROTOCOL", protocol.lower())
    monkeypatch.setenv("LATTICE_KAFKA_SASL_USERNAME", "lattice")
    monkeypatch.setenv("LATTICE_KAFKA_SASL_PASSWORD", "s3cret")
    try:
        load_settings()
        options = kafka_options.options()
    finally:
        monkeypatch.undo()
        kafka_options.configure(Settings())
    assert set(options) == keys
    if "ssl_context" in options:
        assert isinstance(options["ssl_context"], ssl.SSLContext)
        assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    if keys:
        assert options["security_protocol"] == protocol
    if "sasl_plain_password" in options:
        assert options["sasl_plain_password"] == "s3cret"


def test_sasl_without_credentials_and_a_ca_file_that_is_not_pem_are_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LATTICE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ConfigError, match=r"^LATTICE_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs"):
        load_settings()
    monkeypatch.setenv("LATTICE_KAFKA_SECURITY_PROTOCOL", "SSL")
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    monkeypatch.setenv("LATTICE_KAFKA_SSL_CAFILE", str(not_pem))
    try:
        with pytest.raises(ConfigError, match=r"^LATTICE_KAFKA_SSL_CAFILE: not a PEM file"):
            load_settings()
    finally:
        from deploy import kafka_options

        monkeypatch.undo()
        kafka_options.configure(Settings())


@pytest.mark.parametrize("usage_topic", ["stripe.events", "stripe.events.dlq"])
def test_usage_facts_never_share_the_event_log(usage_topic: str) -> None:
    """A usage fact has no Stripe headers: on the event log, every projection would check
    it as a Stripe event and dead-letter it, and reconciliation would count no usage."""
    with pytest.raises(ConfigError, match=r"LATTICE_USAGE_TOPIC=.* must differ from"):
        load_settings({"usage_topic": usage_topic})
