"""Mutual TLS on a real CellLink server: identities, refusals and certificate reload.

Every CA and certificate is made at run time with :mod:`cellplane.federation.pki`.
The server is a tiny CellLink servicer on port 0 that checks the first Hello
against the client certificate, as the real parent does.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from cellplane.config import TlsConfig
from cellplane.errors import CellplaneError, PermissionDenied, Unauthenticated
from cellplane.federation import pki
from cellplane.federation.security import (
    channel_credentials,
    check_peer_cell,
    is_secure,
    peer_identities,
    server_credentials,
)
from cellplane.v1 import link_pb2, link_pb2_grpc

DEADLINE = 5.0

STATUS_FOR_CODE = {code.value[0]: code for code in grpc.StatusCode}


@dataclass
class Parent(link_pb2_grpc.CellLinkServicer):
    """Answers a Hello whose cell matches the client certificate; records who came."""

    seen: list[set[str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def Connect(
        self,
        request_iterator: Iterator[link_pb2.ConnectRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[link_pb2.ConnectResponse]:
        first = next(request_iterator, None)
        if first is None or not first.HasField("hello"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first frame must be a Hello")
        auth = context.auth_context()
        try:
            check_peer_cell(first.hello.cell, auth, tls_required=True)
        except CellplaneError as exc:
            context.abort(STATUS_FOR_CODE[int(exc.code)], exc.message)
        with self.lock:
            self.seen.append(peer_identities(auth))
        yield link_pb2.ConnectResponse(hello=link_pb2.Hello(cell="parent", protocol_version=1))


@dataclass
class Running:
    port: int
    servicer: Parent


@dataclass
class Pki:
    dir: Path
    ca: pki.CertificateAuthority
    ca_path: Path

    def tls(self, cell: str, ca: Path | None = None) -> TlsConfig:
        return TlsConfig(cert=self.dir / f"{cell}.crt", key=self.dir / f"{cell}.key", ca=ca)


Serve = Callable[[TlsConfig], Running]


@pytest.fixture
def certs(tmp_path: Path) -> Pki:
    ca = pki.make_ca()
    ca_path = tmp_path / "ca.crt"
    ca.write(ca_path, tmp_path / "ca.key")
    for cell in ("parent", "child", "other"):
        ca.issue_cell(cell, out_dir=tmp_path)
    return Pki(dir=tmp_path, ca=ca, ca_path=ca_path)


@pytest.fixture
def serve() -> Iterator[Serve]:
    servers: list[grpc.Server] = []

    def start(tls: TlsConfig) -> Running:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        servicer = Parent()
        link_pb2_grpc.add_CellLinkServicer_to_server(servicer, server)
        port = server.add_secure_port("127.0.0.1:0", server_credentials(tls))
        assert port > 0
        server.start()
        servers.append(server)
        return Running(port=port, servicer=servicer)

    yield start
    for server in servers:
        server.stop(grace=None)


def say_hello(
    port: int, credentials: grpc.ChannelCredentials | None, cell: str
) -> link_pb2.ConnectResponse:
    """Open a link as ``cell`` on a fresh channel and return the parent's first frame."""
    # A private subchannel pool so no connection is shared between attempts.
    options = [("grpc.use_local_subchannel_pool", 1)]
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.secure_channel(target, credentials, options=options)
        if credentials is not None
        else grpc.insecure_channel(target, options=options)
    )
    with channel:
        stub = link_pb2_grpc.CellLinkStub(channel)
        hello = link_pb2.ConnectRequest(hello=link_pb2.Hello(cell=cell, protocol_version=1))
        responses = stub.Connect(iter([hello]), timeout=DEADLINE)
        return next(responses)


def refused(port: int, credentials: grpc.ChannelCredentials | None, cell: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        say_hello(port, credentials, cell)
    return info.value


def test_good_mtls_link_succeeds_and_server_sees_the_cell(certs: Pki, serve: Serve) -> None:
    server = serve(certs.tls("parent", ca=certs.ca_path))

    reply = say_hello(
        server.port, channel_credentials(certs.tls("child", ca=certs.ca_path)), "child"
    )

    assert reply.hello.cell == "parent"
    assert server.servicer.seen == [{"child"}]


def test_client_certificate_from_another_ca_is_refused_at_handshake(
    certs: Pki, serve: Serve, tmp_path: Path
) -> None:
    server = serve(certs.tls("parent", ca=certs.ca_path))
    stranger = pki.make_ca("stranger CA")
    cert, key = stranger.issue_cell("child", out_dir=tmp_path / "stranger")

    err = refused(server.port, channel_credentials(TlsConfig(cert, key, certs.ca_path)), "child")

    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert server.servicer.seen == []


def test_client_without_certificate_is_refused_by_mtls_server(certs: Pki, serve: Serve) -> None:
    server = serve(certs.tls("parent", ca=certs.ca_path))
    no_cert = grpc.ssl_channel_credentials(root_certificates=certs.ca_path.read_bytes())

    err = refused(server.port, no_cert, "child")

    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_for_another_cell_than_the_hello_is_permission_denied(
    certs: Pki, serve: Serve
) -> None:
    server = serve(certs.tls("parent", ca=certs.ca_path))

    err = refused(server.port, channel_credentials(certs.tls("other", ca=certs.ca_path)), "child")

    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'child'" in (err.details() or "")
    assert "other" in (err.details() or "")
    assert server.servicer.seen == []


def test_tls_server_without_client_auth_refuses_an_anonymous_cell(certs: Pki, serve: Serve) -> None:
    server = serve(certs.tls("parent"))  # no CA: server-side TLS only
    anonymous = grpc.ssl_channel_credentials(root_certificates=certs.ca_path.read_bytes())

    err = refused(server.port, anonymous, "child")

    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_plaintext_client_against_tls_server_is_unavailable(certs: Pki, serve: Serve) -> None:
    server = serve(certs.tls("parent", ca=certs.ca_path))

    err = refused(server.port, None, "child")

    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_server_certificate_reloads_without_restart(
    certs: Pki, serve: Serve, tmp_path: Path
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(certs.dir / "parent.crt", served / "parent.crt")
    shutil.copy(certs.dir / "parent.key", served / "parent.key")
    server = serve(TlsConfig(served / "parent.crt", served / "parent.key", certs.ca_path))
    child = certs.tls("child", ca=certs.ca_path)

    new_ca = pki.make_ca("second CA")
    new_ca_path = tmp_path / "second-ca.crt"
    new_ca.write(new_ca_path, tmp_path / "second-ca.key")
    trusts_new_ca_only = TlsConfig(child.cert, child.key, new_ca_path)

    # Before: the server still presents the first CA's certificate.
    assert say_hello(server.port, channel_credentials(child), "child").hello.cell == "parent"
    err = refused(server.port, channel_credentials(trusts_new_ca_only), "child")
    assert err.code() == grpc.StatusCode.UNAVAILABLE

    new_ca.issue_cell("parent", out_dir=served)

    # After: new connections get the second CA's certificate, with no restart.
    reply = say_hello(server.port, channel_credentials(trusts_new_ca_only), "child")
    assert reply.hello.cell == "parent"
    err = refused(server.port, channel_credentials(child), "child")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert server.servicer.seen == [{"child"}, {"child"}]


def test_half_replaced_pair_keeps_the_previous_certificate(
    certs: Pki, serve: Serve, tmp_path: Path
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(certs.dir / "parent.crt", served / "parent.crt")
    shutil.copy(certs.dir / "parent.key", served / "parent.key")
    server = serve(TlsConfig(served / "parent.crt", served / "parent.key", certs.ca_path))
    child = channel_credentials(certs.tls("child", ca=certs.ca_path))

    # A new certificate whose key has not been written yet must not be loaded.
    cert_pem, _ = certs.ca.issue_cell_pem("parent")
    (served / "parent.crt").write_bytes(cert_pem)

    assert say_hello(server.port, child, "child").hello.cell == "parent"


# --- identities, without a server -------------------------------------------------


def test_certificate_names_the_cell_and_hosts(certs: Pki) -> None:
    cert = x509.load_pem_x509_certificate((certs.dir / "child.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    assert pki.cell_identity("child") == "child.cells.cellplane"
    assert san.get_values_for_type(x509.DNSName) == ["child.cells.cellplane", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert oct(os.stat(certs.dir / "child.key").st_mode & 0o777) == "0o600"


def test_create_deployment_certs_reuses_an_existing_ca(tmp_path: Path) -> None:
    first = pki.create_deployment_certs(tmp_path, ["api", "eu-west"])
    ca_before = (tmp_path / "ca.crt").read_bytes()
    second = pki.create_deployment_certs(tmp_path, ["eu-east"])

    assert set(first) == {"ca", "api", "eu-west"}
    assert second["eu-east"] == (tmp_path / "eu-east.crt", tmp_path / "eu-east.key")
    assert (tmp_path / "ca.crt").read_bytes() == ca_before


def test_ca_bundle_holds_every_ca(tmp_path: Path) -> None:
    one, two = pki.make_ca("one"), pki.make_ca("two")
    one.write(tmp_path / "one.crt", tmp_path / "one.key")

    bundle = pki.write_ca_bundle(tmp_path / "bundle.crt", [tmp_path / "one.crt", two])

    loaded = x509.load_pem_x509_certificates(bundle.read_bytes())
    assert [c.subject.rfc4514_string() for c in loaded] == ["CN=one", "CN=two"]


def auth(*sans: bytes, secure: bool = True) -> dict[str, list[bytes]]:
    context: dict[str, list[bytes]] = {
        "transport_security_type": [b"ssl" if secure else b"insecure"]
    }
    if sans:
        context["x509_subject_alternative_name"] = list(sans)
        context["x509_pem_cert"] = [b"-----BEGIN CERTIFICATE-----"]
    return context


def test_peer_identities_keep_only_cell_sans() -> None:
    context = auth(b"eu-west.cells.cellplane", b"localhost", b"127.0.0.1", b".cells.cellplane")

    assert peer_identities(context) == {"eu-west"}
    assert is_secure(context)
    assert not is_secure(auth(secure=False))


def test_check_peer_cell_uses_a_configured_identity() -> None:
    context = auth(b"edge-7.cells.cellplane")

    check_peer_cell("eu-west", context, tls_required=True, expected_identity="edge-7")
    check_peer_cell(
        "eu-west", context, tls_required=True, expected_identity="edge-7.cells.cellplane"
    )
    with pytest.raises(PermissionDenied, match=r"'eu-west'.*edge-7"):
        check_peer_cell("eu-west", context, tls_required=True)
    with pytest.raises(PermissionDenied, match="edge-8"):
        check_peer_cell("eu-west", context, tls_required=True, expected_identity="edge-8")


def test_check_peer_cell_without_tls() -> None:
    check_peer_cell("eu-west", auth(secure=False), tls_required=False)
    with pytest.raises(Unauthenticated, match="eu-west"):
        check_peer_cell("eu-west", auth(secure=False), tls_required=True)
