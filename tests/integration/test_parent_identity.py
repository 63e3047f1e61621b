"""A child checks that its parent's certificate names the parent cell.

Two real cells over mutual TLS, every certificate made at run time: the child
dials ``top`` and the link comes up only when the server there presents a
certificate naming ``top`` (or the parent's configured ``tls_identity``), not
merely one from the federation's CA.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from cellplane.config import CellConfig, ChildConfig, ParentConfig, TlsConfig
from cellplane.federation import pki
from cellplane.federation.channel import LinkState, Relation
from cellplane.service import Cell

WAIT = 10.0
REFUSED_FOR = 3.0  # seconds a link that must not come up is watched


def _certs(tmp: Path) -> Path:
    ca = pki.make_ca()
    ca.write(tmp / "ca.crt", tmp / "ca.key")
    for cell in ("top", "leaf", "impostor"):
        ca.issue_cell(cell, out_dir=tmp)
    return tmp / "ca.crt"


def _tls(tmp: Path, cert_of: str) -> TlsConfig:
    return TlsConfig(cert=tmp / f"{cert_of}.crt", key=tmp / f"{cert_of}.key", ca=tmp / "ca.crt")


async def _parent_link(tmp: Path, top_cert: str, identity: str = "") -> tuple[LinkState, str]:
    """Start ``top`` serving ``top_cert``'s certificate and a child dialing it; the
    child's link state to ``top`` after it came up or ``REFUSED_FOR`` seconds, and
    the dialer's last error."""
    top = Cell(
        CellConfig(
            name="top",
            database_url=f"sqlite:///{tmp / 'top'}.db",
            listen="127.0.0.1:0",
            children=(ChildConfig("leaf"),),
            tls=_tls(tmp, top_cert),
        )
    )
    await top.start()
    leaf = Cell(
        CellConfig(
            name="leaf",
            database_url=f"sqlite:///{tmp / 'leaf'}.db",
            listen="127.0.0.1:0",
            parents=(ParentConfig("top", top.address, tls_identity=identity),),
            tls=_tls(tmp, "leaf"),
        )
    )
    await leaf.start()
    try:
        channel = leaf.neighbours.get("top", Relation.PARENT)
        assert channel is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REFUSED_FOR
        while channel.state is not LinkState.UP and loop.time() < deadline:
            await asyncio.sleep(0.05)
        errors = [dialer.last_error for dialer, _ in leaf._dialers.values()]
        return channel.state, " ".join(errors)
    finally:
        await leaf.stop(grace=0.2)
        await top.stop(grace=0.2)


def test_a_parent_whose_certificate_names_it_is_accepted(tmp_path: Path) -> None:
    _certs(tmp_path)
    state, _ = asyncio.run(asyncio.wait_for(_parent_link(tmp_path, "top"), WAIT + REFUSED_FOR))
    assert state is LinkState.UP


def test_a_parent_with_another_cells_certificate_is_refused(tmp_path: Path) -> None:
    _certs(tmp_path)
    state, error = asyncio.run(
        asyncio.wait_for(_parent_link(tmp_path, "impostor"), WAIT + REFUSED_FOR)
    )
    assert state is not LinkState.UP
    assert error, "the dialer should say why the link is down"


def test_a_configured_tls_identity_is_what_the_parent_must_carry(tmp_path: Path) -> None:
    _certs(tmp_path)
    # The server at top's address is run with the impostor's certificate on purpose,
    # and the child was told that this is the identity to expect there.
    state, _ = asyncio.run(
        asyncio.wait_for(
            _parent_link(tmp_path, "impostor", identity="impostor.cells.cellplane"),
            WAIT + REFUSED_FOR,
        )
    )
    assert state is LinkState.UP
