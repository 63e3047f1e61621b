"""A small certificate authority for the certificates that join cells.

A cell's identity is the SAN ``DNS:<cell>.cells.cellplane`` (see
:data:`CELL_SAN_SUFFIX` and :func:`cell_identity`). A cell certificate also
names the hosts the cell is dialled at (DNS names and IP addresses), so the
ordinary TLS hostname check passes, and is valid for both server and client
authentication: a cell serves its children and dials its parents.

Keys are EC P-256, signatures SHA-256, files PEM; private keys are written with
mode 0600. Files are replaced atomically so that a server reloading them (see
:mod:`cellplane.federation.security`) never reads a half-written pair.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cellplane.config import CELL_NAME
from cellplane.errors import InvalidArgument

__all__ = [
    "CELL_SAN_SUFFIX",
    "DEFAULT_CA_NAME",
    "DEFAULT_DAYS",
    "DEFAULT_HOSTS",
    "CertificateAuthority",
    "cell_identity",
    "create_deployment_certs",
    "load_ca",
    "make_ca",
    "write_ca_bundle",
]

CELL_SAN_SUFFIX = ".cells.cellplane"
DEFAULT_CA_NAME = "cellplane test CA"
DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")
DEFAULT_DAYS = 365
DEFAULT_CA_DAYS = 3650

# Certificates start a little in the past so a peer whose clock lags still accepts them.
_CLOCK_SKEW = datetime.timedelta(minutes=5)


def cell_identity(cell: str) -> str:
    """The DNS SAN that names ``cell`` in its certificate: ``<cell>.cells.cellplane``."""
    _check_cell(cell)
    return f"{cell}{CELL_SAN_SUFFIX}"


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA key and its self-signed certificate; issues cell certificates."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate as PEM (what peers put in their trust roots)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, cert_path: Path, key_path: Path) -> None:
        """Write the CA certificate and (mode 0600) key as PEM."""
        _write_atomic(cert_path, self.cert_pem, mode=0o644)
        _write_atomic(key_path, _key_pem(self.key), mode=0o600)

    def issue_cell(
        self,
        cell: str,
        *,
        out_dir: Path,
        hosts: Sequence[str] = DEFAULT_HOSTS,
        days: int = DEFAULT_DAYS,
    ) -> tuple[Path, Path]:
        """Issue a certificate for ``cell``; write ``<cell>.crt`` and ``<cell>.key`` in ``out_dir``.

        Returns ``(cert_path, key_path)``.
        """
        cert_pem, key_pem = self.issue_cell_pem(cell, hosts=hosts, days=days)
        out_dir.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = out_dir / f"{cell}.crt", out_dir / f"{cell}.key"
        # Key first: a reloading server that sees the new certificate also finds its key.
        _write_atomic(key_path, key_pem, mode=0o600)
        _write_atomic(cert_path, cert_pem, mode=0o644)
        return cert_path, key_path

    def issue_cell_pem(
        self, cell: str, *, hosts: Sequence[str] = DEFAULT_HOSTS, days: int = DEFAULT_DAYS
    ) -> tuple[bytes, bytes]:
        """Issue a certificate for ``cell`` and return ``(cert_pem, key_pem)`` without writing."""
        if days <= 0:
            raise InvalidArgument(f"certificate validity must be positive, got {days} days")
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cell_identity(cell))]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(_san(cell, hosts)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def make_ca(
    common_name: str = DEFAULT_CA_NAME, *, days: int = DEFAULT_CA_DAYS
) -> CertificateAuthority:
    """Create a new self-signed CA (EC P-256, SHA-256)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(key=key, cert=cert)


def load_ca(cert_path: Path, key_path: Path) -> CertificateAuthority:
    """Load a CA written by :meth:`CertificateAuthority.write`."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidArgument(f"{key_path}: expected an EC private key")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise InvalidArgument(f"{key_path} is not the key of {cert_path}")
    return CertificateAuthority(key=key, cert=cert)


def write_ca_bundle(path: Path, cas: Iterable[CertificateAuthority | Path]) -> Path:
    """Write the certificates of several CAs into one PEM trust bundle.

    Trusting old and new CA together lets a deployment rotate its CA without a
    moment where a link cannot be verified. Paths are read as PEM files.
    """
    parts = [ca.read_bytes() if isinstance(ca, Path) else ca.cert_pem for ca in cas]
    if not parts:
        raise InvalidArgument("a CA bundle needs at least one CA")
    _write_atomic(path, b"".join(p if p.endswith(b"\n") else p + b"\n" for p in parts), mode=0o644)
    return path


def create_deployment_certs(
    out_dir: Path,
    cells: list[str],
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = DEFAULT_DAYS,
) -> dict[str, tuple[Path, Path]]:
    """Make ``ca.crt``/``ca.key`` and one ``<cell>.crt``/``<cell>.key`` per cell in ``out_dir``.

    An existing ``ca.crt``/``ca.key`` pair in ``out_dir`` is reused, so cells can be
    added to a running deployment; otherwise a new CA is made. Returns the
    ``(cert_path, key_path)`` of each cell, and of the CA under the key ``"ca"``.
    """
    for cell in cells:
        _check_cell(cell)
    out_dir.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = out_dir / "ca.crt", out_dir / "ca.key"
    if ca_cert.exists() and ca_key.exists():
        ca = load_ca(ca_cert, ca_key)
    else:
        ca = make_ca("cellplane CA")
        ca.write(ca_cert, ca_key)
    made: dict[str, tuple[Path, Path]] = {"ca": (ca_cert, ca_key)}
    for cell in cells:
        made[cell] = ca.issue_cell(cell, out_dir=out_dir, hosts=hosts, days=days)
    return made


def _check_cell(cell: str) -> None:
    if not CELL_NAME.match(cell):
        raise InvalidArgument(f"invalid cell name {cell!r}: expected {CELL_NAME.pattern}")


def _san(cell: str, hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(cell_identity(cell))]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
