"""Certificates for a private broker's TLS listener: a throwaway CA and a server
certificate for 127.0.0.1 that it signed, made by the `openssl` command line."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_DAYS = "2"


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA's certificate (PEM): what a client trusts
    keystore: Path  # the server's key and chain (PKCS12) for the broker
    password: str


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_certificates(directory: Path, password: str = "lattice-tls") -> Certificates:
    """A CA and a server certificate for IP 127.0.0.1 signed by it, in `directory`."""
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        _DAYS,
        "-keyout",
        ca_key,
        "-out",
        ca,
        "-subj",
        "/CN=Lattice test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    key, request, certificate = (directory / n for n in ("server.key", "server.csr", "server.pem"))
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key,
        "-out",
        request,
        "-subj",
        "/CN=127.0.0.1",
    )
    extensions = directory / "server.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        request,
        "-CA",
        ca,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-days",
        _DAYS,
        "-out",
        certificate,
        "-extfile",
        extensions,
    )
    keystore = directory / "server.p12"
    _openssl(
        "pkcs12",
        "-export",
        "-in",
        certificate,
        "-inkey",
        key,
        "-certfile",
        ca,
        "-name",
        "broker",
        "-out",
        keystore,
        "-passout",
        f"pass:{password}",
    )
    return Certificates(ca=ca, keystore=keystore, password=password)
