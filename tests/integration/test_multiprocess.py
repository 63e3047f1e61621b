"""Cells as separate processes: the tree forms, over plaintext and mutual TLS;
a killed and restarted cell loses and duplicates nothing; SIGTERM stops gracefully.

Every cell is ``python -m cellplane.cli.main serve --config FILE`` (or the
test-only launcher ``echo_cell.py``) on free loopback ports, with its own
SQLite file under ``tmp_path`` and kombu ``memory://``. Waits poll every 0.2 s
up to a bound and fail early when a cell process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from cellplane.config import CellConfig, ChildConfig, TlsConfig, load_config
from cellplane.federation import envelopes, pki
from cellplane.federation.channel import LinkState, Relation
from cellplane.federation.dispatch import Delivery
from cellplane.federation.security import channel_credentials
from cellplane.service import Cell
from cellplane.v1 import cells_pb2, cells_pb2_grpc, link_pb2, types_pb2

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "mtls"
ECHO_CELL = Path(__file__).resolve().parent / "echo_cell.py"
WAIT = 20.0  # upper bound of every wait; a healthy run needs a small fraction of it
POLL = 0.2
RPC_TIMEOUT = 3.0


# --- processes ---------------------------------------------------------------------


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on right now (bound to 0, then released), and never one
    handed out before in this run: the kernel may give a just-released port again,
    and two cells of one tree would then share it."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclass
class CellProcess:
    """One running cell process and its log file (JSON lines on stderr)."""

    name: str
    argv: list[str]
    log: Path
    cwd: Path
    proc: subprocess.Popen[bytes] = field(init=False)
    stopped_on_purpose: bool = False

    def start(self) -> CellProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELLPLANE_")}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        return self

    def events(self) -> list[dict[str, Any]]:
        """The structured log events written so far."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return found

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL (if still running) and reap."""
        self.stopped_on_purpose = True
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM: ask for a graceful stop (the caller waits for the exit)."""
        self.stopped_on_purpose = True
        self.proc.send_signal(signal.SIGTERM)


class Launcher:
    """Starts cell processes and kills whatever is still running at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.running: list[CellProcess] = []

    def serve(self, name: str, config: Path, *, cwd: Path | None = None) -> CellProcess:
        argv = [sys.executable, "-m", "cellplane.cli.main", "--log-format", "json"]
        return self._start(name, [*argv, "serve", "--config", str(config)], cwd)

    def echo_cell(self, name: str, config: Path, *extra: str) -> CellProcess:
        return self._start(name, [sys.executable, str(ECHO_CELL), str(config), *extra], None)

    def _start(self, name: str, argv: list[str], cwd: Path | None) -> CellProcess:
        log = self.tmp_path / f"{name}.log"
        cell = CellProcess(name, argv, log, cwd or self.tmp_path).start()
        self.running.append(cell)
        return cell

    def check_alive(self) -> None:
        """Fail at once, with its log, if a cell process died on its own."""
        for cell in self.running:
            code = cell.proc.poll()
            if code is not None and not cell.stopped_on_purpose:
                pytest.fail(f"cell {cell.name} exited with {code}:\n{cell.tail()}")

    def cleanup(self) -> None:
        for cell in self.running:
            cell.kill()


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    cells = Launcher(tmp_path)
    try:
        yield cells
    finally:
        cells.cleanup()


def wait_until(check: Callable[[], str | None], what: str, launcher: Launcher) -> None:
    """Poll ``check`` (None means done, else what is still missing) up to WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        launcher.check_alive()
        try:
            missing = check()
        except grpc.RpcError as exc:
            missing = f"{exc.code().name}: {exc.details()}"
        if missing is None:
            return
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {c.name}\n{c.tail(8)}" for c in launcher.running)
            pytest.fail(f"timed out waiting for {what}: {missing}\n{logs}")
        time.sleep(POLL)


# --- configs and trees -------------------------------------------------------------


def write_config(
    path: Path,
    name: str,
    port: int,
    *,
    parents: dict[str, int] | None = None,
    children: tuple[str, ...] = (),
    capabilities: str = "",
) -> Path:
    """A plaintext cell config with its SQLite file next to it."""
    lines = [
        "[cell]",
        f'name = "{name}"',
        f'listen = "127.0.0.1:{port}"',
        f'database_url = "sqlite:///{path.parent / (name + ".db")}"',
        'transport_url = "memory://"',
    ]
    if capabilities:
        lines.append(f'capabilities = "{capabilities}"')
    for parent, parent_port in (parents or {}).items():
        lines += ["", "[[parents]]", f'name = "{parent}"', f'address = "127.0.0.1:{parent_port}"']
    for child in children:
        lines += ["", "[[children]]", f'name = "{child}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def get_tree(address: str, credentials: grpc.ChannelCredentials | None = None) -> Any:
    """GetTree at ``address`` (TLS when ``credentials`` are given)."""
    channel = (
        grpc.secure_channel(address, credentials)
        if credentials is not None
        else grpc.insecure_channel(address)
    )
    with channel:
        stub = cells_pb2_grpc.CellsServiceStub(channel)
        return stub.GetTree(cells_pb2.GetTreeRequest(), timeout=RPC_TIMEOUT).root


def links(node: types_pb2.CellNode) -> dict[str, int]:
    """Path -> link state of every cell below ``node``."""
    found: dict[str, int] = {}
    for child in node.children:
        found[child.path] = child.link_state
        found.update(links(child))
    return found


def tree_missing(root: types_pb2.CellNode, expected: set[str]) -> str | None:
    """What keeps the tree from being exactly ``expected`` with every link up, or None."""
    states = links(root)
    if set(states) != expected:
        return f"tree has {sorted(states)}, want {sorted(expected)}"
    down = sorted(p for p, s in states.items() if s != types_pb2.LINK_STATE_UP)
    return f"links not up: {down}" if down else None


def capability_values(node: types_pb2.CellNode, name: str) -> set[str]:
    return {v for c in node.capabilities if c.name == name for v in c.values}


def find(node: types_pb2.CellNode, path: str) -> types_pb2.CellNode | None:
    if node.path == path:
        return node
    for child in node.children:
        hit = find(child, path)
        if hit is not None:
            return hit
    return None


# --- a: three levels, a cell with two parents --------------------------------------


def test_processes_form_a_tree_where_one_cell_has_two_parents(
    tmp_path: Path, launcher: Launcher
) -> None:
    """api1 -> mid -> leaf and api1 -> east; mid is also a child of api2.

    Both API cells see the whole subtree below them with every link up, and the
    leaf's capabilities reach both through mid.
    """
    ports = {n: free_port() for n in ("api1", "api2", "mid", "leaf", "east")}
    configs = {
        "api1": write_config(
            tmp_path / "api1.toml", "api1", ports["api1"], children=("mid", "east")
        ),
        "api2": write_config(tmp_path / "api2.toml", "api2", ports["api2"], children=("mid",)),
        "mid": write_config(
            tmp_path / "mid.toml",
            "mid",
            ports["mid"],
            parents={"api1": ports["api1"], "api2": ports["api2"]},
            children=("leaf",),
            capabilities="hypervisor=kvm",
        ),
        "leaf": write_config(
            tmp_path / "leaf.toml",
            "leaf",
            ports["leaf"],
            parents={"mid": ports["mid"]},
            capabilities="hypervisor=xen",
        ),
        "east": write_config(
            tmp_path / "east.toml",
            "east",
            ports["east"],
            parents={"api1": ports["api1"]},
            capabilities="arch=arm",
        ),
    }
    # Children first: they keep dialling until their parents are up.
    for name in ("leaf", "east", "mid", "api2", "api1"):
        launcher.serve(name, configs[name])
    api1, api2 = f"127.0.0.1:{ports['api1']}", f"127.0.0.1:{ports['api2']}"

    want1 = {"api1!mid", "api1!mid!leaf", "api1!east"}
    want2 = {"api2!mid", "api2!mid!leaf"}
    wait_until(lambda: tree_missing(get_tree(api1), want1), "the tree at api1", launcher)
    wait_until(lambda: tree_missing(get_tree(api2), want2), "the tree at api2", launcher)

    def reports_arrived() -> str | None:
        for address, mid_path in ((api1, "api1!mid"), (api2, "api2!mid")):
            mid = find(get_tree(address), mid_path)
            seen = capability_values(mid, "hypervisor") if mid else set()
            if seen != {"kvm", "xen"}:
                return f"{mid_path} reports hypervisor={sorted(seen)}"
        return None

    wait_until(reports_arrived, "capability reports through mid to both API cells", launcher)

    # The CLI, as a user would run it, prints the same tree.
    shown = subprocess.run(
        [sys.executable, "-m", "cellplane.cli.main", "--server", api2, "tree"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"mid link=up .*hypervisor=kvm;xen", shown.stdout), shown.stdout
    assert re.search(r"leaf link=up .*hypervisor=xen", shown.stdout), shown.stdout
    assert "east" not in shown.stdout


# --- b: the mTLS example configs ---------------------------------------------------


def copy_mtls_example(dest: Path) -> dict[str, Path]:
    """examples/mtls under ``dest`` with fresh certificates and free ports.

    Returns the config of each cell. Run the cells with ``dest`` as the working
    directory so the example's relative ``database_url`` values hold unchanged.
    """
    target = dest / "examples" / "mtls"
    target.mkdir(parents=True)
    sources = sorted(EXAMPLE.glob("*.toml"))
    listens = {
        p.stem: tomllib.loads(p.read_text())["cell"]["listen"].rpartition(":")[2] for p in sources
    }
    assert set(listens) == {"api", "eu-west", "eu-west-a", "us-east"}
    ports = {old: str(free_port()) for old in listens.values()}
    configs: dict[str, Path] = {}
    for source in sources:
        text = re.sub(
            r"127\.0\.0\.1:(\d+)",
            lambda m: f"127.0.0.1:{ports.get(m.group(1), m.group(1))}",
            source.read_text(),
        )
        configs[source.stem] = target / source.name
        configs[source.stem].write_text(text)
    pki.create_deployment_certs(target / "certs", sorted(configs))
    (target / "data").mkdir()
    return configs


def test_mtls_example_configs_form_the_tree_as_separate_processes(
    tmp_path: Path, launcher: Launcher
) -> None:
    configs = copy_mtls_example(tmp_path)
    for name, config in configs.items():
        launcher.serve(name, config, cwd=tmp_path)
    api = tomllib.loads(configs["api"].read_text())["cell"]["listen"]
    certs = tmp_path / "examples" / "mtls" / "certs"
    client = TlsConfig(cert=certs / "api.crt", key=certs / "api.key", ca=certs / "ca.crt")

    want = {"api!eu-west", "api!eu-west!eu-west-a", "api!us-east"}
    wait_until(
        lambda: tree_missing(get_tree(api, channel_credentials(client)), want),
        "the mTLS tree at api",
        launcher,
    )
    assert all((tmp_path / "examples" / "mtls" / "data" / f"{n}.db").is_file() for n in configs)

    # The servers speak only mutual TLS: plaintext and TLS without a client
    # certificate are both turned away.
    with pytest.raises(grpc.RpcError):
        get_tree(api)
    server_only = grpc.ssl_channel_credentials(root_certificates=client.ca.read_bytes())  # type: ignore[union-attr]
    with pytest.raises(grpc.RpcError):
        get_tree(api, server_only)

    # The CLI reaches them with --ca/--cert/--key.
    tls_args = ["--ca", str(client.ca), "--cert", str(client.cert), "--key", str(client.key)]
    shown = subprocess.run(
        [sys.executable, "-m", "cellplane.cli.main", "--server", api, *tls_args, "tree"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    for cell in ("eu-west", "eu-west-a", "us-east"):
        assert re.search(rf"\b{cell} link=up\b", shown.stdout), shown.stdout


# --- c: kill and restart, exactly once ---------------------------------------------


@dataclass
class EchoTally:
    """What the in-process parent sent down, had acknowledged, and received from below."""

    sent: list[int] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    received_up: list[int] = field(default_factory=list)

    def on_acked(self, done: list[link_pb2.Envelope]) -> None:
        self.acked.extend(e.echo.sequence for e in done if e.WhichOneof("payload") == "echo")

    def on_echo(self, env: link_pb2.Envelope, delivery: Delivery) -> None:
        self.received_up.append(env.echo.sequence)


def read_seqs(db: Path, table: str) -> list[int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            return [row[0] for row in conn.execute(f"SELECT seq FROM {table}")]
        except sqlite3.OperationalError:  # the launcher has not created it yet
            return []


def test_child_killed_and_restarted_mid_stream_handles_every_echo_exactly_once(
    tmp_path: Path, launcher: Launcher
) -> None:
    """The parent (in this process) streams Echoes down while the child process is
    SIGKILLed and restarted on the same database; the child streams Echoes up too.

    Down: every sequence sent is in the child's echo_log exactly once (unacked ones
    were re-sent after the reconnect, already-handled ones dropped by the child's
    persisted cursor). Up: every sequence the child recorded as acked reached the
    parent exactly once, and nothing reached it twice.
    """
    total, kill_at, restart_at = 1500, 400, 700
    up_first_run, up_second_run, up_second_first = 400, 200, 100_001
    child_config = tmp_path / "child.toml"
    child_db = tmp_path / "child.db"
    tally = EchoTally()
    unacked_at_kill = 0
    committed_not_acked: set[int] = set()

    async def scenario() -> None:
        nonlocal unacked_at_kill, committed_not_acked
        config = CellConfig(
            name="parent",
            database_url=f"sqlite:///{tmp_path / 'parent.db'}",
            listen="127.0.0.1:0",
            children=(ChildConfig("child"),),
            report_interval=30.0,
        )
        parent = Cell(config)
        await parent.start()
        try:
            parent.handlers.register_inline("echo", tally.on_echo)
            channel = parent.neighbours.get("child", Relation.CHILD)
            assert channel is not None
            channel.on_acked.append(tally.on_acked)
            port = int(parent.address.rpartition(":")[2])
            write_config(child_config, "child", free_port(), parents={"parent": port})
            child = launcher.echo_cell("child-1", child_config, "--send-up", str(up_first_run))

            async def until(check: Callable[[], bool], what: str, poll: float = POLL) -> None:
                deadline = time.monotonic() + WAIT
                while not check():
                    launcher.check_alive()
                    if time.monotonic() > deadline:
                        pytest.fail(f"timed out waiting for {what}\n{child.tail()}")
                    await asyncio.sleep(poll)

            await until(lambda: channel.state is LinkState.UP, "the child's link")
            seq = 0
            killed = restarted = False

            def send(count: int) -> set[int]:
                nonlocal seq
                first = seq + 1
                for _ in range(count):
                    seq += 1
                    parent.router.send(
                        "parent!child", envelopes.DOWN, echo=link_pb2.Echo(sequence=seq)
                    )
                    tally.sent.append(seq)
                return set(range(first, seq + 1))

            # One steady stream down; the child dies in the middle of it and comes back
            # on the same database while the parent keeps sending.
            while seq < total:
                send(10)
                if (
                    not killed
                    and seq >= kill_at
                    and tally.acked
                    and read_seqs(child_db, "up_acked")
                ):
                    # The acks of a burst are held back, as if lost in flight when the
                    # child dies: the child has committed the burst, the parent still
                    # holds it. A last few go out just before the kill.
                    channel.apply_ack = lambda ack: None  # type: ignore[method-assign]
                    burst = send(200)

                    def burst_committed(burst: set[int] = burst) -> bool:
                        return burst <= set(read_seqs(child_db, "echo_log"))

                    await until(burst_committed, "the child to commit the burst", poll=0.01)
                    send(10)
                    unacked_at_kill = channel.unacked
                    await asyncio.to_thread(child.kill)
                    del channel.apply_ack
                    committed_not_acked = burst - set(tally.acked)
                    killed = True
                elif killed and not restarted and seq >= restart_at:
                    child = launcher.echo_cell(
                        "child-2",
                        child_config,
                        *("--send-up", str(up_second_run), "--first", str(up_second_first)),
                    )
                    restarted = True
                await asyncio.sleep(0.005)
            assert killed and restarted, f"the child never acked: {child.tail()}"

            await until(lambda: channel.unacked == 0, "every Echo sent down to be acked")
            second_run = set(range(up_second_first, up_second_first + up_second_run))
            await until(
                lambda: second_run <= set(read_seqs(child_db, "up_acked")),
                "the restarted child's Echoes up to be acked",
            )
            child.terminate()
            assert await asyncio.to_thread(child.proc.wait, 10) == 0, child.tail()
        finally:
            await parent.stop()

    asyncio.run(scenario())
    # The kill landed mid-stream: 200 committed by the child without the parent
    # knowing, 10 more never delivered.
    assert len(committed_not_acked) == 200
    assert unacked_at_kill >= 210

    # Down: all of it, once each.
    assert sorted(tally.sent) == list(range(1, total + 1))
    assert Counter(tally.acked) == Counter(tally.sent)
    logged = Counter(read_seqs(child_db, "echo_log"))
    assert [s for s, n in logged.items() if n > 1] == []
    assert set(logged) == set(tally.sent)

    # Up: the parent got nothing twice, and everything the child saw acked.
    received = Counter(tally.received_up)
    assert [s for s, n in received.items() if n > 1] == []
    up_acked = read_seqs(child_db, "up_acked")
    assert set(up_acked) & set(range(1, up_first_run + 1)), "no ack recorded before the kill"
    assert set(up_acked) <= set(received)
    assert set(range(up_second_first, up_second_first + up_second_run)) <= set(received)


# --- d: graceful stop --------------------------------------------------------------


def test_sigterm_stops_a_cell_gracefully_and_its_parent_sees_the_link_go_down(
    tmp_path: Path, launcher: Launcher
) -> None:
    ports = {"top": free_port(), "below": free_port()}
    top_cfg = write_config(tmp_path / "top.toml", "top", ports["top"], children=("below",))
    below_cfg = write_config(
        tmp_path / "below.toml", "below", ports["below"], parents={"top": ports["top"]}
    )
    top = launcher.serve("top", top_cfg)
    below = launcher.serve("below", below_cfg)
    address = f"127.0.0.1:{ports['top']}"
    wait_until(lambda: tree_missing(get_tree(address), {"top!below"}), "the link", launcher)

    below.terminate()
    assert below.proc.wait(timeout=10) == 0, below.tail()
    events = [e["event"] for e in below.events()]
    assert "cell_stopped" in events, below.tail()
    assert events.index("cell_started") < events.index("cell_stopped")

    def link_down() -> str | None:
        states = links(get_tree(address))
        return None if states.get("top!below") == types_pb2.LINK_STATE_DOWN else str(states)

    wait_until(link_down, "top to see the link down", launcher)
    top.terminate()
    assert top.proc.wait(timeout=10) == 0, top.tail()
    assert "cell_stopped" in [e["event"] for e in top.events()], top.tail()


def test_mtls_example_configs_load_and_describe_one_tree(tmp_path: Path) -> None:
    """Each example config passes the real loader; parents and children agree;
    ports, databases and certificates are each cell's own."""
    configs = copy_mtls_example(tmp_path)
    loaded = {name: load_config(path, {}) for name, path in configs.items()}
    certs = (tmp_path / "examples" / "mtls" / "certs").resolve()
    for name, cfg in loaded.items():
        assert cfg.name == name
        assert cfg.tls is not None
        assert (cfg.tls.cert, cfg.tls.key, cfg.tls.ca) == (
            certs / f"{name}.crt",
            certs / f"{name}.key",
            certs / "ca.crt",
        )
        assert cfg.database_url == f"sqlite:///examples/mtls/data/{name}.db"
        for parent in cfg.parents:
            assert parent.address == loaded[parent.name].listen
            assert name in [c.name for c in loaded[parent.name].children]
        for child in cfg.children:
            assert name in [p.name for p in loaded[child.name].parents]
    assert loaded["api"].roles == ("cells", "api")
    assert loaded["eu-west"].roles == ("cells", "scheduler", "compute", "network")
    assert len({cfg.listen for cfg in loaded.values()}) == len(loaded)
    assert [n for n, cfg in loaded.items() if not cfg.parents] == ["api"]
