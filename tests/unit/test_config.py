"""The config loader: file, environment, and refusals that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellplane.config import load_config
from cellplane.errors import ConfigError

GOOD = """
[cell]
name = "eu-west"
listen = "127.0.0.1:50061"
database_url = "sqlite:///eu.db"
roles = ["cells", "compute"]
capabilities = "hypervisor=kvm;xen,arch=x86_64"

[links]
mute_interval = 30

[[parents]]
name = "api"
address = "127.0.0.1:50051"

[[children]]
name = "eu-west-a"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cell.toml"
    path.write_text(text)
    return path


def test_file_is_loaded_into_frozen_values(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), env={})
    assert cfg.name == "eu-west"
    assert cfg.roles == ("cells", "compute")
    assert cfg.capabilities == (("arch", ("x86_64",)), ("hypervisor", ("kvm", "xen")))
    assert cfg.mute_interval == 30.0
    assert [p.name for p in cfg.parents] == ["api"]
    assert [c.name for c in cfg.children] == ["eu-west-a"]
    with pytest.raises(AttributeError):
        cfg.name = "other"  # type: ignore[misc]


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, GOOD),
        env={"CELLPLANE_LISTEN": "0.0.0.0:6000", "CELLPLANE_ROLES": "cells,api"},
    )
    assert cfg.listen == "0.0.0.0:6000"
    assert cfg.roles == ("cells", "api")


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        (GOOD.replace('"eu-west"', '"EU!west"', 1), {}, "cell.name"),
        (GOOD.replace('"127.0.0.1:50061"', '"nowhere"'), {}, "cell.listen"),
        (GOOD.replace('["cells", "compute"]', '["cells", "bogus"]'), {}, "cell.roles"),
        (GOOD.replace("mute_interval = 30", "mute_interval = -1"), {}, "links.mute_interval"),
        (GOOD, {"CELLPLANE_MAX_HOPS": "many"}, "CELLPLANE_MAX_HOPS"),
        (GOOD.replace('database_url = "sqlite:///eu.db"', ""), {}, "cell.database_url"),
        (GOOD + "\n[cell2]\n", {}, "cell2"),
        (GOOD.replace('name = "eu-west-a"', 'name = "eu-west"'), {}, "children"),
        (GOOD + '\n[tls]\ncert = "missing.pem"\nkey = "k.pem"\n', {}, "tls.cert"),
    ],
)
def test_invalid_config_is_refused_naming_the_key(
    tmp_path: Path, text: str, env: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env)
    assert info.value.key == key
    assert key in str(info.value)


def test_compute_scheduler_network_and_api_tables(tmp_path: Path) -> None:
    text = (
        GOOD
        + """
[compute]
spawn_latency = 0.01
host_count = 3
host = { name = "eu-h", memory_mb = 8192 }

[scheduler]
retries = 2

[network]
pools = { private = "10.1.0.0/24" }

[api]
tokens = { s3cret = "demo:member" }
"""
    )
    cfg = load_config(write(tmp_path, text), env={})
    assert [h.name for h in cfg.compute.hosts] == ["eu-h1", "eu-h2", "eu-h3"]
    assert cfg.compute.hosts[0].memory_mb == 8192
    assert cfg.scheduler.retries == 2
    assert cfg.network.pools == (("private", "10.1.0.0/24"),)
    assert cfg.api.tokens == (("s3cret", ("demo", "member")),)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[network]\npools = { private = "10.1.0.1/24" }\n', "network.pools.private"),
        ('[api]\ntokens = { t = "demo:root" }\n', "api.tokens.t"),
        ("[compute]\nhost_count = 0\n", "compute.host_count"),
        ("[scheduler]\nretries = -1\n", "scheduler.retries"),
        ("[compute]\nbogus = 1\n", "compute.bogus"),
    ],
)
def test_invalid_role_tables_are_refused(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD + "\n" + extra), env={})
    assert info.value.key == key


def test_the_api_role_needs_the_cells_role(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD), env={"CELLPLANE_ROLES": "api"})
    assert info.value.key == "CELLPLANE_ROLES"
    assert "cells role" in str(info.value)
