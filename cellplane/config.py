"""Configuration of one cell: frozen dataclasses built by one loader.

The loader reads an optional TOML file, then ``CELLPLANE_*`` environment
variables (which win), validates everything, and returns a :class:`CellConfig`.
Apart from the command line's own two (``CELLPLANE_TOKEN``, the caller's bearer
token, and ``CELLPLANE_EVENT_LOOP``, see :mod:`cellplane.cli.runtime`), nothing
else in cellplane reads the environment. An invalid value is refused
with :class:`~cellplane.errors.ConfigError` naming the key and the problem.

A file looks like::

    [cell]
    name = "eu-west"
    listen = "127.0.0.1:50061"
    database_url = "postgresql+psycopg2://cellplane@db/eu_west"
    transport_url = "amqp://guest:guest@127.0.0.1:5672//"
    roles = ["cells", "scheduler", "compute", "network"]
    capabilities = "hypervisor=kvm;xen"

    [[parents]]
    name = "api"
    address = "10.0.0.1:50051"

    [[children]]
    name = "eu-west-a"
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cellplane.errors import ConfigError

CELL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ROLES = ("cells", "api", "scheduler", "compute", "network")
API_CELL_ROLES = ("cells", "api")
COMPUTE_CELL_ROLES = ("cells", "scheduler", "compute", "network")

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_TRANSPORT_URL = "memory://"
DEFAULT_REPORT_INTERVAL = 10.0
DEFAULT_MUTE_INTERVAL = 60.0
DEFAULT_MAX_HOPS = 16
DEFAULT_RESERVE_PERCENT = 0.0
DEFAULT_RESPONSE_TIMEOUT = 10.0
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DEFAULT_SYNC_INTERVAL = 300.0


@dataclass(frozen=True)
class TlsConfig:
    """Certificate files of a cell. With ``ca`` set, peers must present a certificate."""

    cert: Path
    key: Path
    ca: Path | None = None


@dataclass(frozen=True)
class ParentConfig:
    """A parent cell this cell dials."""

    name: str
    address: str
    tls_identity: str = ""


@dataclass(frozen=True)
class ChildConfig:
    """A child cell allowed to dial this cell."""

    name: str
    tls_identity: str = ""


@dataclass(frozen=True)
class HostConfig:
    """A (simulated) hypervisor host run by this cell's compute role."""

    name: str
    vcpus: int = 16
    memory_mb: int = 65536
    local_gb: int = 1000
    availability_zone: str = "nova"
    hypervisor_type: str = "kvm"


@dataclass(frozen=True)
class ComputeConfig:
    """The compute role: its hosts and how the fake driver behaves."""

    hosts: tuple[HostConfig, ...] = ()
    spawn_latency: float = 0.0
    action_latency: float = 0.0
    heartbeat_interval: float = 10.0
    cpu_allocation_ratio: float = 16.0
    ram_allocation_ratio: float = 1.5
    disk_allocation_ratio: float = 1.0


@dataclass(frozen=True)
class SchedulerConfig:
    """Cell and host scheduling."""

    retries: int = 3
    service_down_time: float = 60.0
    ram_weight_multiplier: float = 1.0  # > 0 spreads, < 0 packs
    build_timeout: float = 30.0


@dataclass(frozen=True)
class NetworkConfig:
    """The network role's fixed-IP pools: name -> CIDR."""

    pools: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ApiConfig:
    """The public API: bearer tokens and who they are."""

    # token -> (project_id, role) with role "admin" or "member"
    tokens: tuple[tuple[str, tuple[str, str]], ...] = ()


@dataclass(frozen=True)
class CellConfig:
    """Everything one cell process needs to know at start."""

    name: str
    database_url: str
    listen: str = DEFAULT_LISTEN
    transport_url: str = DEFAULT_TRANSPORT_URL
    roles: tuple[str, ...] = API_CELL_ROLES
    parents: tuple[ParentConfig, ...] = ()
    children: tuple[ChildConfig, ...] = ()
    capabilities: tuple[tuple[str, tuple[str, ...]], ...] = ()
    reserve_percent: float = DEFAULT_RESERVE_PERCENT
    report_interval: float = DEFAULT_REPORT_INTERVAL
    mute_interval: float = DEFAULT_MUTE_INTERVAL
    max_hops: int = DEFAULT_MAX_HOPS
    response_timeout: float = DEFAULT_RESPONSE_TIMEOUT
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    sync_interval: float = DEFAULT_SYNC_INTERVAL
    tls: TlsConfig | None = None
    compute: ComputeConfig = ComputeConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    network: NetworkConfig = NetworkConfig()
    api: ApiConfig = ApiConfig()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_roles(self, roles: tuple[str, ...]) -> CellConfig:
        """The same cell running only ``roles``."""
        return replace(self, roles=_roles("cell.roles", roles))


def parse_capabilities(key: str, raw: object) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Accept ``"hypervisor=kvm;xen,arch=x86_64"`` or a TOML table of lists."""
    pairs: list[tuple[str, tuple[str, ...]]] = []
    if isinstance(raw, str):
        for item in filter(None, (part.strip() for part in raw.split(","))):
            name, sep, values = item.partition("=")
            if not sep or not name.strip():
                raise ConfigError(key, f"expected name=value[;value], got {item!r}")
            pairs.append((name.strip(), tuple(v.strip() for v in values.split(";") if v.strip())))
    elif isinstance(raw, Mapping):
        for name, given in raw.items():
            listed = [v for v in given.split(";") if v] if isinstance(given, str) else given
            if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
                raise ConfigError(f"{key}.{name}", "expected a list of strings")
            pairs.append((str(name), tuple(listed)))
    else:
        raise ConfigError(key, "expected a string or a table")
    return tuple(sorted(pairs))


def _cell_name(key: str, raw: object) -> str:
    if not isinstance(raw, str) or not CELL_NAME.match(raw):
        raise ConfigError(key, f"{raw!r} is not a cell name (expected {CELL_NAME.pattern})")
    return raw


def _address(key: str, raw: object) -> str:
    if not isinstance(raw, str):
        raise ConfigError(key, "expected host:port")
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"{raw!r} is not host:port")
    return raw


def _roles(key: str, raw: object) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [r.strip() for r in raw.split(",") if r.strip()]
    if not isinstance(raw, list | tuple) or not raw:
        raise ConfigError(key, "expected a non-empty list of roles")
    unknown = [r for r in raw if r not in ROLES]
    if unknown:
        raise ConfigError(key, f"unknown role(s) {unknown}; known: {', '.join(ROLES)}")
    if "api" in raw and "cells" not in raw:
        raise ConfigError(
            key,
            "the api role reaches other cells through the cells role: run them in the same process",
        )
    return tuple(dict.fromkeys(str(r) for r in raw))


def _positive(kind: Callable[[Any], float | int]) -> Callable[[str, object], Any]:
    def parse(key: str, raw: object) -> Any:
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise ConfigError(key, f"{raw!r} is not a {kind.__name__}") from None
        if value <= 0:
            raise ConfigError(key, f"must be > 0, got {value}")
        return value

    return parse


def _percent(key: str, raw: object) -> float:
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(key, f"{raw!r} is not a number") from None
    if not 0.0 <= value < 100.0:
        raise ConfigError(key, f"must be in [0, 100), got {value}")
    return value


def _text(key: str, raw: object) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(key, "expected a non-empty string")
    return raw


# Scalar settings of the [cell] and [links] tables: (table, key) -> parser.
# The environment variable of each is CELLPLANE_<KEY>.
_SCALARS: dict[tuple[str, str], Callable[[str, object], Any]] = {
    ("cell", "name"): _cell_name,
    ("cell", "listen"): _address,
    ("cell", "database_url"): _text,
    ("cell", "transport_url"): _text,
    ("cell", "roles"): _roles,
    ("cell", "capabilities"): parse_capabilities,
    ("cell", "reserve_percent"): _percent,
    ("links", "report_interval"): _positive(float),
    ("links", "mute_interval"): _positive(float),
    ("links", "max_hops"): _positive(int),
    ("links", "response_timeout"): _positive(float),
    ("links", "max_message_bytes"): _positive(int),
    ("links", "sync_interval"): _positive(float),
}
_KNOWN_TABLES = {
    "cell",
    "links",
    "parents",
    "children",
    "tls",
    "compute",
    "scheduler",
    "network",
    "api",
    "extra",
}


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
) -> CellConfig:
    """Build a :class:`CellConfig` from a TOML file and ``CELLPLANE_*`` variables."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError("--config", f"{path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None
    unknown = set(raw) - _KNOWN_TABLES
    if unknown:
        raise ConfigError(sorted(unknown)[0], f"unknown table; known: {sorted(_KNOWN_TABLES)}")
    base = Path(path).resolve().parent if path is not None else Path.cwd()

    values: dict[str, Any] = dict(defaults or {})
    for (table, key), parse in _SCALARS.items():
        section = raw.get(table, {})
        if key in section:
            values[key] = parse(f"{table}.{key}", section[key])
    for table in ("cell", "links"):
        extra_keys = set(raw.get(table, {})) - {k for t, k in _SCALARS if t == table}
        if extra_keys:
            raise ConfigError(f"{table}.{sorted(extra_keys)[0]}", "unknown key")
    for (_table, key), parse in _SCALARS.items():
        var = f"CELLPLANE_{key.upper()}"
        if env and var in env:
            values[key] = parse(var, env[var])

    for required in ("name", "database_url"):
        if required not in values:
            raise ConfigError(f"cell.{required}", "is required")

    parents = tuple(_parent(i, item) for i, item in enumerate(raw.get("parents", [])))
    children = tuple(_child(i, item) for i, item in enumerate(raw.get("children", [])))
    for kind, group in (("parents", parents), ("children", children)):
        names = [n.name for n in group]
        if len(set(names)) != len(names):
            raise ConfigError(kind, f"duplicate cell name in {names}")
        if values["name"] in names:
            raise ConfigError(kind, f"a cell cannot be its own neighbour ({values['name']})")
    tls = _tls(raw["tls"], base) if "tls" in raw else None
    return CellConfig(
        parents=parents,
        children=children,
        tls=tls,
        compute=_compute(raw.get("compute", {})),
        scheduler=_scheduler(raw.get("scheduler", {})),
        network=_network(raw.get("network", {})),
        api=_api(raw.get("api", {})),
        extra=dict(raw.get("extra", {})),
        **values,
    )


def _parent(index: int, item: Mapping[str, Any]) -> ParentConfig:
    key = f"parents[{index}]"
    return ParentConfig(
        name=_cell_name(f"{key}.name", item.get("name")),
        address=_address(f"{key}.address", item.get("address")),
        tls_identity=str(item.get("tls_identity", "")),
    )


def _child(index: int, item: Mapping[str, Any]) -> ChildConfig:
    key = f"children[{index}]"
    return ChildConfig(
        name=_cell_name(f"{key}.name", item.get("name")),
        tls_identity=str(item.get("tls_identity", "")),
    )


def _tls(section: Mapping[str, Any], base: Path) -> TlsConfig:
    def file(key: str, required: bool) -> Path | None:
        value = section.get(key)
        if value is None:
            if required:
                raise ConfigError(f"tls.{key}", "is required")
            return None
        resolved = (base / str(value)).resolve()
        if not resolved.is_file():
            raise ConfigError(f"tls.{key}", f"{resolved} is not a file")
        return resolved

    cert, key = file("cert", True), file("key", True)
    assert cert is not None and key is not None
    return TlsConfig(cert=cert, key=key, ca=file("ca", False))


def _table(name: str, section: object, known: set[str]) -> Mapping[str, Any]:
    if not isinstance(section, Mapping):
        raise ConfigError(name, "expected a table")
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", f"unknown key; known: {sorted(known)}")
    return section


def _compute(section: object) -> ComputeConfig:
    floats = {
        "spawn_latency",
        "action_latency",
        "heartbeat_interval",
        "cpu_allocation_ratio",
        "ram_allocation_ratio",
        "disk_allocation_ratio",
    }
    table = _table("compute", section, floats | {"hosts", "host_count", "host"})
    values: dict[str, Any] = {}
    for key in floats & set(table):
        parse = _positive(float) if key != "spawn_latency" and key != "action_latency" else _latency
        values[key] = parse(f"compute.{key}", table[key])
    hosts = [_host(f"compute.hosts[{i}]", h) for i, h in enumerate(table.get("hosts", []))]
    if "host_count" in table:
        count = _positive(int)("compute.host_count", table["host_count"])
        template = _host("compute.host", {"name": "host", **table.get("host", {})})
        hosts += [replace(template, name=f"{template.name}{i + 1}") for i in range(count)]
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        raise ConfigError("compute.hosts", f"duplicate host names in {names}")
    return ComputeConfig(hosts=tuple(hosts), **values)


def _latency(key: str, raw: object) -> float:
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(key, f"{raw!r} is not a number") from None
    if value < 0:
        raise ConfigError(key, f"must be >= 0, got {value}")
    return value


def _host(key: str, raw: object) -> HostConfig:
    table = _table(
        key, raw, {"name", "vcpus", "memory_mb", "local_gb", "availability_zone", "hypervisor_type"}
    )
    name = table.get("name")
    if not isinstance(name, str) or not CELL_NAME.match(name):
        raise ConfigError(f"{key}.name", f"{name!r} is not a valid host name")
    values: dict[str, Any] = {
        k: _positive(int)(f"{key}.{k}", table[k])
        for k in ("vcpus", "memory_mb", "local_gb")
        if k in table
    }
    for k in ("availability_zone", "hypervisor_type"):
        if k in table:
            values[k] = _text(f"{key}.{k}", table[k])
    return HostConfig(name=name, **values)


def _scheduler(section: object) -> SchedulerConfig:
    table = _table(
        "scheduler",
        section,
        {"retries", "service_down_time", "ram_weight_multiplier", "build_timeout"},
    )
    values: dict[str, Any] = {}
    if "retries" in table:
        retries = table["retries"]
        if not isinstance(retries, int) or retries < 0:
            raise ConfigError("scheduler.retries", f"must be an integer >= 0, got {retries!r}")
        values["retries"] = retries
    for key in ("service_down_time", "build_timeout"):
        if key in table:
            values[key] = _positive(float)(f"scheduler.{key}", table[key])
    if "ram_weight_multiplier" in table:
        try:
            values["ram_weight_multiplier"] = float(table["ram_weight_multiplier"])
        except (TypeError, ValueError):
            raise ConfigError("scheduler.ram_weight_multiplier", "is not a number") from None
    return SchedulerConfig(**values)


def _network(section: object) -> NetworkConfig:
    import ipaddress

    table = _table("network", section, {"pools"})
    pools = table.get("pools", {})
    if not isinstance(pools, Mapping):
        raise ConfigError("network.pools", "expected a table of name = CIDR")
    checked = []
    for name, cidr in pools.items():
        try:
            ipaddress.ip_network(str(cidr), strict=True)
        except ValueError as exc:
            raise ConfigError(f"network.pools.{name}", f"{cidr!r} is not a CIDR: {exc}") from None
        checked.append((str(name), str(cidr)))
    return NetworkConfig(pools=tuple(checked))


def _api(section: object) -> ApiConfig:
    table = _table("api", section, {"tokens"})
    tokens = table.get("tokens", {})
    if not isinstance(tokens, Mapping):
        raise ConfigError("api.tokens", 'expected a table of token = "project:role"')
    parsed = []
    for token, who in tokens.items():
        project, sep, role = str(who).partition(":")
        if not sep or not project or role not in {"admin", "member"}:
            raise ConfigError(
                f"api.tokens.{token}", f'expected "project:admin|member", got {who!r}'
            )
        parsed.append((str(token), (project, role)))
    return ApiConfig(tokens=tuple(parsed))
