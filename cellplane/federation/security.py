"""TLS for CellLink: credentials for both ends and the check of a peer's cell identity.

A cell's certificate names it with the SAN ``DNS:<cell>.cells.cellplane`` (see
:mod:`cellplane.federation.pki`). The accepting side (the parent) serves with
:func:`server_credentials`; with a CA configured it requires and verifies a
client certificate, and after the child's ``Hello`` it calls
:func:`check_peer_cell` so a child cannot speak for another cell.

Certificates reload without restart. The server re-reads its files at the next
handshake after their modification time, size or inode changed; the dialling
side calls :func:`channel_credentials` at every reconnect, which reads them fresh.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import cast

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cellplane.config import TlsConfig
from cellplane.errors import InvalidArgument, PermissionDenied, Unauthenticated
from cellplane.federation.pki import CELL_SAN_SUFFIX

__all__ = [
    "AuthContext",
    "channel_credentials",
    "check_peer_cell",
    "is_secure",
    "peer_identities",
    "server_credentials",
]

log = structlog.get_logger()

# What ``ServicerContext.auth_context()`` returns: property name -> values. The
# sync stubs declare the values as ``bytes``, the aio ones as ``Iterable[bytes]``.
AuthContext = Mapping[str, Iterable[bytes] | bytes]

_SAN_KEY = "x509_subject_alternative_name"
_SECURITY_TYPE_KEY = "transport_security_type"
_PEER_CERT_KEY = "x509_pem_cert"

# (mtime_ns, size, inode) of each watched file; None for a file that is not configured.
_Stamp = tuple[tuple[int, int, int] | None, ...]


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """TLS server credentials for ``tls``; mutual TLS when ``tls.ca`` is set.

    The certificate, key and CA files are watched: a handshake after they change
    uses the new ones. A half-replaced pair (a certificate whose key has not
    arrived yet) is not loaded; the previous pair keeps serving until it is whole.
    """
    files = _ServerCertificateFiles(tls)
    initial = files.load()
    # grpc calls the fetcher before each handshake; None means "keep the current one".
    fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], files.fetch)
    return grpc.dynamic_ssl_server_credentials(
        initial, fetcher, require_client_authentication=tls.ca is not None
    )


def channel_credentials(tls: TlsConfig | None) -> grpc.ChannelCredentials:
    """TLS credentials for dialling a parent, read from the files now.

    With ``tls`` set: the cell's certificate and key as the client certificate, and
    ``tls.ca`` (or the system roots when it is not set) to verify the parent. With
    ``None``: server-verified TLS against the system roots and no client certificate.
    """
    if tls is None:
        return grpc.ssl_channel_credentials()
    cert, key = _read_pair(tls.cert, tls.key)
    roots = tls.ca.read_bytes() if tls.ca is not None else None
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=key, certificate_chain=cert
    )


def is_secure(auth_context: AuthContext) -> bool:
    """Whether the peer is connected over TLS."""
    return b"ssl" in _values(auth_context, _SECURITY_TYPE_KEY)


def peer_identities(auth_context: AuthContext) -> set[str]:
    """The cell names the peer's certificate carries (SANs ``<cell>.cells.cellplane``)."""
    cells: set[str] = set()
    for raw in _values(auth_context, _SAN_KEY):
        name = raw.decode("ascii", "replace").strip().lower().rstrip(".")
        if name.endswith(CELL_SAN_SUFFIX) and len(name) > len(CELL_SAN_SUFFIX):
            cells.add(name[: -len(CELL_SAN_SUFFIX)])
    return cells


def check_peer_cell(
    claimed: str,
    auth_context: AuthContext,
    *,
    tls_required: bool,
    expected_identity: str | None = None,
) -> None:
    """Refuse a peer whose certificate does not name the cell it claims to be.

    ``claimed`` is the cell named in the peer's ``Hello``. ``expected_identity``
    (a configured ``tls_identity``, either a cell name or its full
    ``<cell>.cells.cellplane`` form) replaces ``claimed`` as the name the
    certificate must carry. Without ``tls_required`` nothing is checked.

    Raises :class:`~cellplane.errors.Unauthenticated` when the peer presented no
    certificate, :class:`~cellplane.errors.PermissionDenied` when its certificate
    names other cells.
    """
    if not tls_required:
        return
    wanted = _identity_name(expected_identity) if expected_identity else claimed
    if not is_secure(auth_context) or not _values(auth_context, _PEER_CERT_KEY):
        raise Unauthenticated(
            f"cell {claimed!r} connected without a TLS client certificate, which is required"
        )
    identities = peer_identities(auth_context)
    if wanted in identities:
        return
    carried = ", ".join(sorted(identities)) or "no cell identity"
    via = f" (configured tls_identity {expected_identity!r})" if expected_identity else ""
    raise PermissionDenied(
        f"peer claims to be cell {claimed!r} but its certificate names {carried}; "
        f"expected {wanted}{CELL_SAN_SUFFIX}{via}"
    )


class _ServerCertificateFiles:
    """The server's certificate files and the stamp of the version last loaded."""

    def __init__(self, tls: TlsConfig) -> None:
        self._tls = tls
        self._lock = threading.Lock()
        self._stamp: _Stamp = ()

    def load(self) -> grpc.ServerCertificateConfiguration:
        """Read the files now; raise when they cannot be used."""
        stamp = self._current_stamp()
        cert, key = _read_pair(self._tls.cert, self._tls.key)
        roots = self._tls.ca.read_bytes() if self._tls.ca is not None else None
        config = grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=roots)
        self._stamp = stamp
        return config

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when the files changed since the last load, else None."""
        with self._lock:
            try:
                if self._current_stamp() == self._stamp:
                    return None
                config = self.load()
            except (OSError, ValueError, InvalidArgument) as exc:
                # Keep serving the previous pair; the next handshake tries again.
                log.warning("tls_reload_failed", cert=str(self._tls.cert), error=str(exc))
                return None
            log.info("tls_reloaded", cert=str(self._tls.cert))
            return config

    def _current_stamp(self) -> _Stamp:
        return tuple(
            _file_stamp(path) if path is not None else None
            for path in (self._tls.cert, self._tls.key, self._tls.ca)
        )


def _file_stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


def _read_pair(cert_path: Path, key_path: Path) -> tuple[bytes, bytes]:
    """Read a certificate chain and its key; refuse a key that is not the certificate's."""
    cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*public) != cert.public_key().public_bytes(*public):
        raise InvalidArgument(f"{key_path} is not the key of the certificate {cert_path}")
    return cert_pem, key_pem


def _values(auth_context: AuthContext, key: str) -> list[bytes]:
    raw = auth_context.get(key)
    if raw is None:
        return []
    if isinstance(raw, bytes):
        return [raw]
    return list(raw)


def identity_san(identity: str) -> str:
    """The DNS SAN a certificate of ``identity`` (a cell name, or its full
    ``<cell>.cells.cellplane`` form) carries."""
    return f"{_identity_name(identity)}{CELL_SAN_SUFFIX}"


def _identity_name(identity: str) -> str:
    name = identity.strip().lower().rstrip(".")
    return name[: -len(CELL_SAN_SUFFIX)] if name.endswith(CELL_SAN_SUFFIX) else name
