"""Every setting of every Lattice process, read from `LATTICE_*` variables and flags.

A missing or malformed value raises `ConfigError` with one line naming the variable, so
the command line can print it instead of a traceback.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from deploy import kafka_options

ENV_PREFIX = "LATTICE_"


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


def parse_webhook_secrets(raw: str) -> dict[str, tuple[str, ...]]:
    """Parse `endpoint=secret,endpoint=secret`; an endpoint named twice keeps both secrets."""
    secrets: dict[str, list[str]] = {}
    for pair in raw.split(","):
        pair = pair.strip()
        if not pair:
            continue
        endpoint, sep, secret = pair.partition("=")
        endpoint, secret = canonical_endpoint(endpoint.strip()), secret.strip()
        if not sep or not endpoint or not secret:
            # Never echo the pair: its right-hand side is a signing secret.
            raise ValueError("expected comma-separated endpoint=secret pairs")
        if not routable(endpoint):
            raise ValueError(
                f"endpoint name {endpoint!r}: not '.' or '..', no '/' and no control "
                "characters (it names the route /webhooks/NAME)"
            )
        check_secret(secret, f"the secret of endpoint {endpoint!r}")
        secrets.setdefault(endpoint, []).append(secret)
    return {name: tuple(values) for name, values in secrets.items()}


def canonical_endpoint(name: str) -> str:
    """An endpoint name as names are kept and matched: in Unicode's composed form (NFC). The
    same name typed in two places may come composed or decomposed (`ü` or `u` + `¨`)."""
    return name if name.isascii() else unicodedata.normalize("NFC", name)


def routable(name: str) -> bool:
    """Whether `name` can be the last segment of /webhooks/NAME: a '/' could never match,
    clients fold '.' and '..' away, and a control character or a lone surrogate could be
    neither a Kafka header value nor a metric label. Any other text is a name (quoted in
    the URL: `lattice send` does it)."""
    return (
        "/" not in name
        and name not in ("", ".", "..")
        and not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name)
    )


def check_secret(secret: str, what: str) -> None:
    """ValueError unless `secret` could be one: it keys the HMAC with its UTF-8 bytes, as
    Stripe's own libraries do, so a lone surrogate (none) is refused, and so is a space
    or a character that does not print (a copy-paste slip: every delivery would fail)."""
    if not secret.isprintable() or any(ch.isspace() for ch in secret):
        message = (
            f"{what} holds a space or a character that does not print "
            "(Stripe's are whsec_ and letters)"
        )
        raise ValueError(message)


KAFKA_CHOICES = {
    "kafka_security_protocol": ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    "kafka_sasl_mechanism": ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
}


class Settings(BaseSettings):
    """Configuration shared by the receiver, the projectors and the tools."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, hide_input_in_errors=True
    )

    webhook_secrets: SecretStr = Field(
        default=SecretStr(""),
        description="endpoint=whsec_... pairs, comma-separated; name an endpoint twice to "
        "rotate (prefer the variable: flags show in the process list)",
    )
    kafka_bootstrap: str = Field(default="127.0.0.1:9092", description="Kafka brokers")
    kafka_security_protocol: str = Field(
        default="PLAINTEXT",
        description="how Kafka clients connect: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    )
    kafka_sasl_mechanism: str = Field(
        default="PLAIN", description="SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(
        default=None,
        description="SASL password (prefer the variable: flags show in the process list)",
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        description="CA certificates (PEM) to verify the brokers by (SSL, SASL_SSL); "
        "the system's when unset",
    )
    database_url: str | None = Field(default=None, description="libpq URL of PostgreSQL")
    topic: str = Field(default="stripe.events", min_length=1, description="the event log topic")
    usage_topic: str = Field(
        default="usage.reported", min_length=1, description="the usage-fact topic"
    )
    signature_tolerance: int = Field(
        default=300, ge=0, description="seconds a signature's timestamp may be off (0: no check)"
    )
    max_body_bytes: int = Field(default=1024 * 1024, gt=0, description="largest webhook body")
    stripe_api_key: SecretStr | None = Field(
        default=None,
        description="Stripe secret key (read access to events, invoices and credit notes), "
        "for thin-event hydration, lines past a webhook's first page, and backfill (prefer "
        "the variable: flags show in the process list)",
    )
    stripe_api_base: str = Field(default="https://api.stripe.com", description="Stripe API URL")
    stripe_api_version: str = Field(
        default="2025-10-29.clover", description="Stripe-Version sent to the API"
    )
    partitions: int = Field(default=6, ge=1, description="partitions of provisioned topics")
    replication_factor: int = Field(
        default=1, ge=1, description="replication factor of provisioned topics"
    )
    kafka_timeout: float = Field(
        default=10.0, gt=0, description="seconds to wait for Kafka (backfill)"
    )
    # The receiver answers 503 when the broker has not acknowledged within this bound.
    publish_timeout: float = Field(
        default=5.0, gt=0, description="seconds for the broker to acknowledge before a 503"
    )
    # A client that takes longer than this to send one body is cut off with 408, so a
    # slow sender cannot hold a connection and its buffer open for ever.
    body_timeout: float = Field(
        default=10.0, gt=0, description="seconds for a client to send its body before a 408"
    )
    home: Path = Field(default=Path(".lattice"), description="the local stack's data folder")
    kafka_port: int = Field(default=9092, gt=0, lt=65536, description="local Kafka port")
    pg_port: int = Field(default=55432, gt=0, lt=65536, description="local PostgreSQL port")
    # Projector runtime: records per batch, how long a batch waits to fill, and how many
    # attempts a failing record gets before it is dead-lettered.
    projector_batch_size: int = Field(default=5000, gt=0, description="records per batch")
    # At least 1: an empty fetch with no wait returns without yielding, and an idle
    # runner would starve the event loop (heartbeats, the other projectors).
    projector_batch_wait_ms: int = Field(
        default=200, ge=1, description="milliseconds a batch waits to fill"
    )
    poison_retries: int = Field(
        default=3,
        ge=1,
        description="attempts before a record whose reduce or apply fails is dead-lettered "
        "(a verdict, at the first)",
    )
    # How long the group waits for a projector process that stopped answering (killed,
    # frozen, cut off) before its partitions move to the others. It must lie within the
    # broker's group.min/max.session.timeout.ms (6 s to 30 min by default).
    projector_session_timeout_ms: int = Field(
        default=10_000,
        ge=100,
        description="milliseconds before a silent projector's partitions move",
    )
    # Projector consumer groups are `<prefix>.<name>`: two deployments sharing one Kafka
    # cluster (staging next to production) give themselves different prefixes.
    group_prefix: str = Field(
        default="lattice", min_length=1, description="consumer groups are <prefix>.<name>"
    )
    # Connect: a transfer on a connected account is an account debit when it goes to the
    # platform; known, the platform's id tells it from a transfer that account makes to
    # connected accounts of its own (it runs a platform too), which is none of ours.
    platform_account: str | None = Field(
        default=None,
        description="the platform's own Stripe account id (acct_...), for Connect debits",
    )

    @field_validator("kafka_bootstrap")
    @classmethod
    def _brokers_are_host_port(cls, value: str) -> str:
        for broker in value.split(","):
            check_host_port(broker.strip(), "host:port[,host:port...]")
        return value

    @field_validator("platform_account", mode="before")
    @classmethod
    def _platform_account_is_an_account_id(cls, value: Any) -> Any:
        if value in (None, ""):
            return None
        if not (isinstance(value, str) and re.fullmatch(r"acct_[0-9A-Za-z]{1,64}", value)):
            shown = value[:64] if isinstance(value, str) else value
            raise ValueError(f"{shown!r} is not a Stripe account id (acct_...)")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_is_a_url(cls, value: str | None) -> str | None:
        if value:
            check_database_url(value)
        return value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism")
    @classmethod
    def _kafka_choice(cls, value: str, info: ValidationInfo) -> str:
        choices = KAFKA_CHOICES[info.field_name or ""]
        if value.upper() not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value.upper()

    @field_validator("kafka_ssl_cafile", mode="before")
    @classmethod
    def _empty_cafile_is_none(cls, value: Any) -> Any:
        # Compose's `${LATTICE_KAFKA_SSL_CAFILE:-}`: no file (it read as the folder ".").
        return None if value == "" else value

    @field_validator("home", mode="before")
    @classmethod
    def _empty_home_is_the_default(cls, value: Any) -> Any:
        # As the scripts read it (`${LATTICE_HOME:-.lattice}`), not the current folder.
        return Path(".lattice") if value == "" else value

    @field_validator("kafka_ssl_cafile")
    @classmethod
    def _cafile_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file")
        return value

    @model_validator(mode="after")
    def _topics_differ(self) -> Settings:
        # A usage fact carries no Stripe headers: on the event log every projection would
        # check it as a Stripe event and dead-letter it.
        if self.usage_topic in (self.topic, self.dlq_topic):
            raise ValueError(
                f"{ENV_PREFIX}USAGE_TOPIC={self.usage_topic} must differ from {ENV_PREFIX}TOPIC "
                "and its dead-letter topic: usage facts are not Stripe events"
            )
        return self

    @model_validator(mode="after")
    def _sasl_has_credentials(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"{ENV_PREFIX}KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                f"{ENV_PREFIX}KAFKA_SASL_USERNAME and {ENV_PREFIX}KAFKA_SASL_PASSWORD"
            )
        return self

    @field_validator("stripe_api_key")
    @classmethod
    def _key_fits_a_header(cls, value: SecretStr | None) -> SecretStr | None:
        # A key read from a file often ends in a newline: drop the whitespace around it.
        # Anything else that cannot go in an HTTP header would otherwise look like Stripe
        # being down (or dead-letter records); never echo the key itself.
        if value is None:
            return None
        key = value.get_secret_value().strip()
        if key and not all("!" <= c <= "~" for c in key):
            raise ValueError(
                "has a space, control or non-ASCII character inside: copy the key again "
                "(sk_... or rk_...)"
            )
        return SecretStr(key)

    @field_validator("stripe_api_version")
    @classmethod
    def _api_version_is_stripes(cls, value: str) -> str:
        # Stripe refuses every request with a version it does not know; a typo would look
        # like every thin event being refused.
        # Beta versions add `; name=v1` parts (`2025-01-27.acacia; some_beta=v1`).
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}(\.[a-z]+)?(; ?[a-z0-9_]+=v\d+)*", value):
            raise ValueError(
                f"{value[:64]!r} is not a Stripe API version (such as 2025-10-29.clover)"
            )
        return value

    @field_validator("stripe_api_base")
    @classmethod
    def _api_base_is_a_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            port_ok = parts.port is None or 0 < parts.port < 65536
        except ValueError:
            port_ok = False
        else:
            if parts.scheme == "http" and parts.hostname and not _loopback(parts.hostname):
                # The secret key would cross the network in the clear.
                raise ValueError(f"{value!r}: http:// is for a local API only; use https://")
            if parts.scheme in ("http", "https") and parts.hostname and port_ok:
                return value
        raise ValueError(f"{value!r} is not an http(s)://host[:port] URL")

    @field_validator("webhook_secrets")
    @classmethod
    def _secrets_are_pairs(cls, value: SecretStr) -> SecretStr:
        parse_webhook_secrets(value.get_secret_value())
        return value

    @property
    def dlq_topic(self) -> str:
        """The dead-letter topic of the event log."""
        return f"{self.topic}.dlq"

    def secrets_by_endpoint(self) -> dict[str, tuple[str, ...]]:
        """Signing secrets per endpoint name, in the order they were given."""
        return parse_webhook_secrets(self.webhook_secrets.get_secret_value())

    def require_database_url(self) -> str:
        """The libpq URL of PostgreSQL, or a `ConfigError` saying how to set it."""
        if not self.database_url:
            raise ConfigError(
                "LATTICE_DATABASE_URL is not set: give a libpq URL "
                "(or run `make stack` and `. .lattice/stack.env`)"
            )
        return self.database_url


def check_host_port(address: str, shape: str) -> None:
    """`address` is `host[:port]` (`[v6]:port` too) with a port in 1..65535; else ValueError
    saying `shape` is expected (the clients' own errors here are tracebacks or hangs)."""
    host, colon, port = address.rpartition(":") if not address.endswith("]") else ("", "", "")
    if not colon:
        host = address
    if not host or (colon and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError(f"{address!r} is not {shape}, with a port from 1 to 65535")


ENCODE_IN_PASSWORD = "in a password, write / # ? @ as %2F %23 %3F %40"


def check_database_url(url: str) -> None:
    """`url` is a libpq URL (`postgresql://[user[:password]@]host[:port][,...]/database`)
    whose ports are numbers; else ValueError, never naming the password."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("must be a libpq URL, postgresql://user[:password]@host[:port]/database")
    if "@" in parts.path or "@" in parts.query or "@" in parts.fragment:
        # `user:8080/s3cret@db` reads as host `user`, port 8080 and a path holding the
        # password, which messages would print: refused, without echoing any of it.
        raise ValueError(f"an `@` after the address: {ENCODE_IN_PASSWORD}")
    if parts.netloc.count("@") > 1:
        # asyncpg splits at the first `@`, libpq at the last: a password holding one would
        # send asyncpg to the host `rest-of-password@host`, and the projector would wait
        # for it forever.
        raise ValueError(
            f"more than one `@` before the address: {ENCODE_IN_PASSWORD} (and an `@` in a "
            "user name, such as Azure's user@server, as %40)"
        )
    hosts = parts.netloc.rpartition("@")[2]
    for host in hosts.split(",") if hosts else ():
        if host:  # an empty host means the local socket, as libpq reads it
            try:
                check_host_port(host, "host[:port] in the URL")
            except ValueError:
                # Not echoed: a password holding `/`, `#` or `?` ends the URL's address
                # there, and what looks like a host is then the user and the password.
                raise ValueError(
                    "a host[:port] in the URL is malformed (a port must be a number from 1 "
                    f"to 65535; {ENCODE_IN_PASSWORD})"
                ) from None


def database_location(url: str) -> str:
    """host:port/database of a libpq URL, without its user or password (for messages)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def without_password(url: str) -> str:
    """A libpq URL fit to print: its password (if any) replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is not None:
        user, _, hosts = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{user.partition(':')[0]}:***@{hosts}")
    # libpq also takes it as a parameter: ?password=..., and a key's: ?sslpassword=... (the
    # query is edited as it is written, not parsed and rebuilt, so the rest reads the same)
    shown = urlunsplit(parts) if parts.password is not None else url
    base, mark, query = shown.partition("?")
    if not mark:
        return shown
    query, hash_mark, fragment = query.partition("#")
    pairs = []
    for pair in query.split("&"):
        key, equals, _ = pair.partition("=")
        # Keys are compared decoded, as libpq and asyncpg read them (`%70assword`).
        hidden = equals and unquote_plus(key) in ("password", "sslpassword")
        pairs.append(f"{key}=***" if hidden else pair)
    return base + mark + "&".join(pairs) + hash_mark + fragment


def load_settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read settings from the environment; `overrides` (from flags) win. Raises ConfigError."""
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:  # a rule over several settings: its message names them
            raise ConfigError(message) from None
        field = str(error["loc"][0])
        source = (
            f"--{field.replace('_', '-')}" if field in given else f"{ENV_PREFIX}{field.upper()}"
        )
        raise ConfigError(f"{source}: {message}") from None
    # Every Kafka client of this process connects as these settings say (see kafka_options).
    try:
        kafka_options.configure(settings)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"{ENV_PREFIX}KAFKA_SSL_CAFILE: not a PEM file of CA certificates ({exc})"
        ) from None
    return settings
