"""Instance rows <-> protobuf, for pushes between cells and for the public API.

States are stored as Nova's lower-case names and travel as the protobuf enums.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache, partial
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Row

from cellplane.db.models import Flavor, Image, InstanceFault
from cellplane.v1 import types_pb2

# Encodings and values that recur (flavors, addresses, a transaction's timestamps) are
# kept, up to _CACHE_LIMIT of each kind.
_CACHE_LIMIT = 4096


def _enum_maps(enum: Any, prefix: str) -> tuple[dict[str, int], dict[int, str]]:
    to_proto: dict[str, int] = {}
    for name, number in enum.items():
        if number:
            to_proto[name.removeprefix(prefix).lower()] = number
    from_proto = {number: name for name, number in to_proto.items()}
    return to_proto, from_proto


_VM, _VM_BACK = _enum_maps(types_pb2.VmState, "VM_STATE_")
_VM["soft-delete"] = _VM.pop("soft_deleted")
_VM_BACK[_VM["soft-delete"]] = "soft-delete"
_TASK, _TASK_BACK = _enum_maps(types_pb2.TaskState, "TASK_STATE_")
for _dashed in ("powering-off", "powering-on"):
    _TASK[_dashed] = _TASK.pop(_dashed.replace("-", "_"))
    _TASK_BACK[_TASK[_dashed]] = _dashed


def vm_state_to_proto(state: str) -> int:
    """``active`` -> VM_STATE_ACTIVE."""
    return _VM.get(state, 0)


def vm_state_from_proto(number: int) -> str:
    """VM_STATE_ACTIVE -> ``active`` ("" for unspecified)."""
    return _VM_BACK.get(number, "")


def task_state_to_proto(state: str | None) -> int:
    """``resize_prep`` -> TASK_STATE_RESIZE_PREP (None -> unspecified)."""
    return _TASK.get(state or "", 0)


def task_state_from_proto(number: int) -> str | None:
    """TASK_STATE_... -> Nova's name, or None for no task."""
    return _TASK_BACK.get(number)


def timestamp(value: datetime | None) -> Timestamp | None:
    """A protobuf timestamp of a datetime (naive ones are UTC, as stored)."""
    if value is None:
        return None
    stamp = Timestamp()
    set_timestamp(stamp, value)
    return stamp


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def set_timestamp(stamp: Timestamp, value: datetime) -> None:
    """Set ``stamp`` to ``value`` in place (what ``FromDatetime`` does, at half the cost:
    this runs three times for every instance put on the wire)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    stamp.seconds = delta.days * 86400 + delta.seconds
    stamp.nanos = delta.microseconds * 1000


def flavor_to_proto(flavor: Flavor | dict[str, Any]) -> types_pb2.Flavor:
    """A flavor row, or an instance's flavor snapshot, as protobuf."""
    if isinstance(flavor, Flavor):
        return types_pb2.Flavor(
            id=flavor.flavor_id,
            name=flavor.name,
            vcpus=flavor.vcpus,
            memory_mb=flavor.memory_mb,
            root_gb=flavor.root_gb,
            ephemeral_gb=flavor.ephemeral_gb,
            disabled=flavor.disabled,
            is_public=flavor.is_public,
            extra_specs=flavor.extra_specs or {},
        )
    return types_pb2.Flavor(
        id=str(flavor.get("id", "")),
        name=str(flavor.get("name", "")),
        vcpus=int(flavor.get("vcpus", 0)),
        memory_mb=int(flavor.get("memory_mb", 0)),
        root_gb=int(flavor.get("root_gb", 0)),
        ephemeral_gb=int(flavor.get("ephemeral_gb", 0)),
    )


def flavor_snapshot(flavor: types_pb2.Flavor) -> dict[str, Any]:
    """What an instance keeps of its flavor."""
    return {
        "id": flavor.id,
        "name": flavor.name,
        "vcpus": flavor.vcpus,
        "memory_mb": flavor.memory_mb,
        "root_gb": flavor.root_gb,
        "ephemeral_gb": flavor.ephemeral_gb,
    }


def image_to_proto(image: Image) -> types_pb2.Image:
    """An image row as protobuf."""
    out = types_pb2.Image(
        id=image.uuid,
        name=image.name,
        status=image.status,
        size_bytes=image.size_bytes,
        min_ram_mb=image.min_ram_mb,
        min_disk_gb=image.min_disk_gb,
        properties={str(k): str(v) for k, v in (image.properties or {}).items()},
        owner=image.owner or "",
    )
    created = timestamp(image.created_at)
    if created is not None:
        out.created_at.CopyFrom(created)
    return out


def fault_to_proto(fault: InstanceFault) -> types_pb2.Fault:
    """A fault row as protobuf."""
    out = types_pb2.Fault(
        code=fault.code, message=fault.message, details=fault.details or "", host=fault.host or ""
    )
    created = timestamp(fault.created_at)
    if created is not None:
        out.created_at.CopyFrom(created)
    return out


def instance_to_proto(row: Any, *, cell_path: str | None = None) -> types_pb2.Instance:
    """An instance as protobuf: an ORM row, or a Core row with the same attribute
    names whose JSON columns may be their stored text (``cell_path`` overrides the
    stored one)."""
    # A Core row's mapping reads several times faster than its attributes.
    get = row._mapping.__getitem__ if isinstance(row, Row) else partial(getattr, row)
    task_state = get("task_state")
    out = types_pb2.Instance(
        uuid=get("uuid"),
        name=get("name"),
        project_id=get("project_id"),
        user_id=get("user_id"),
        image_id=get("image_id"),
        vm_state=_VM.get(get("vm_state"), 0),  # type: ignore[arg-type]
        task_state=_TASK.get(task_state, 0) if task_state else 0,  # type: ignore[arg-type]
        power_state=get("power_state"),
        version=get("version"),
        cell_path=get("cell_path") if cell_path is None else cell_path,
        host=get("host") or "",
        availability_zone=get("availability_zone") or "",
        deleted=get("deleted"),
    )
    # Stored JSON text and timestamps recur: their encodings are merged in one go.
    parts: list[bytes] = []
    for column in _JSON_COLUMNS:
        value = get(column)
        if isinstance(value, str):
            parts.append(_json_part(column, value))
        elif value or column == "flavor":
            _set_json(out, column, value or {})
    for name in ("created_at", "updated_at", "launched_at"):
        value = get(name)
        if value is not None:
            zone = value.tzinfo
            if zone is not UTC:  # kept by UTC value: other zones' times may differ in fold
                value = value.replace(tzinfo=UTC) if zone is None else value.astimezone(UTC)
            parts.append(_stamp_part(name, value))
    if parts:
        out.MergeFromString(b"".join(parts))
    return out


@lru_cache(maxsize=_CACHE_LIMIT)
def _stamp_part(name: str, value: datetime) -> bytes:
    """An Instance holding only timestamp ``name`` = ``value`` (UTC), serialized."""
    out = types_pb2.Instance()
    set_timestamp(getattr(out, name), value)
    return out.SerializeToString()


# An instance's JSON columns (by ORM attribute) and their protobuf fields. Their
# values repeat (a flavor for many instances, an instance's addresses in every one
# of its pushes), so their encodings are kept, up to _CACHE_LIMIT of each.
_JSON_COLUMNS = ("flavor", "metadata_", "addresses")
_PARTS: dict[tuple[str, str], bytes] = {}  # (column, stored text) -> serialized Instance part
_TEXTS: dict[tuple[str, Any], str] = {}  # (column, protobuf value key) -> stored text


def _set_json(out: types_pb2.Instance, column: str, value: Any) -> None:
    if column == "flavor":  # always there, empty or not
        out.flavor.SetInParent()
        out.flavor.CopyFrom(flavor_to_proto(value))
    elif column == "metadata_":
        out.metadata.update({str(k): str(v) for k, v in value.items()})
    else:
        out.addresses.extend(
            types_pb2.Address(
                pool=a.get("pool", ""),
                address=a.get("address", ""),
                version=int(a.get("version", 4)),
            )
            for a in value
        )


def _json_part(column: str, text: str) -> bytes:
    """An Instance holding only what ``column``'s stored ``text`` says, serialized."""
    part = _PARTS.get((column, text))
    if part is None:
        out = types_pb2.Instance()
        value = json.loads(text)
        if value or column == "flavor":
            _set_json(out, column, value or {})
        part = out.SerializeToString()
        if len(_PARTS) >= _CACHE_LIMIT:
            _PARTS.clear()
        _PARTS[(column, text)] = part
    return part


def _json_text(column: str, key: Any, value: Any) -> str:
    """The text stored for ``value`` of ``column`` (``key``: a hashable form of it)."""
    text = _TEXTS.get((column, key))
    if text is None:
        text = json.dumps(value() if callable(value) else value)
        if len(_TEXTS) >= _CACHE_LIMIT:
            _TEXTS.clear()
        _TEXTS[(column, key)] = text
    return text


def _flavor_text(msg: types_pb2.Instance) -> str:
    flavor = msg.flavor
    return _json_text("flavor", flavor.SerializeToString(), lambda: flavor_snapshot(flavor))


def _metadata_text(msg: types_pb2.Instance) -> str:
    if not msg.metadata:
        return "{}"
    metadata = dict(sorted(msg.metadata.items()))
    return _json_text("metadata", tuple(metadata.items()), metadata)


def _addresses_text(msg: types_pb2.Instance) -> str:
    if not msg.addresses:
        return "[]"
    key = tuple((a.pool, a.address, a.version) for a in msg.addresses)
    return _json_text(
        "addresses", key, [{"pool": p, "address": a, "version": v} for p, a, v in key]
    )


def _stamp(name: str) -> Callable[[types_pb2.Instance], datetime | None]:
    def value(msg: types_pb2.Instance) -> datetime | None:
        if not msg.HasField(name):
            return None  # not sent: left as it is
        stamp = getattr(msg, name)
        return _datetime_of(stamp.seconds, stamp.nanos)

    return value


@lru_cache(maxsize=_CACHE_LIMIT)
def _datetime_of(seconds: int, nanos: int) -> datetime:
    # Kept: the rows of one transaction share their updated_at.
    return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)


# (protobuf field, column, the column's value in a message) for every column a push
# carries, but cell_path (which each cell makes its own).
_COLUMNS: tuple[tuple[str, str, Callable[[types_pb2.Instance], Any]], ...] = (
    ("name", "name", lambda m: m.name),
    ("project_id", "project_id", lambda m: m.project_id),
    ("user_id", "user_id", lambda m: m.user_id),
    ("flavor", "flavor_id", lambda m: m.flavor.id),
    ("flavor", "flavor", _flavor_text),
    ("image_id", "image_id", lambda m: m.image_id),
    ("vm_state", "vm_state", lambda m: _VM_BACK.get(m.vm_state, "")),
    ("task_state", "task_state", lambda m: _TASK_BACK.get(m.task_state)),
    ("power_state", "power_state", lambda m: int(m.power_state)),
    ("version", "version", lambda m: m.version),
    ("host", "host", lambda m: m.host or None),
    ("availability_zone", "availability_zone", lambda m: m.availability_zone or None),
    ("metadata", "metadata", _metadata_text),
    ("deleted", "deleted", lambda m: m.deleted),
    ("addresses", "addresses", _addresses_text),
    ("created_at", "created_at", _stamp("created_at")),
    ("updated_at", "updated_at", _stamp("updated_at")),
    ("launched_at", "launched_at", _stamp("launched_at")),
)
_OPTIONAL = frozenset(("created_at", "updated_at", "launched_at"))  # None: not sent


def instance_columns(
    msg: types_pb2.Instance, before: types_pb2.Instance | None = None
) -> dict[str, Any]:
    """What :func:`instance_fields` gives, by column name, JSON columns as the text to
    store (for :mod:`cellplane.db.bulk`); with ``before`` (the message the row holds
    now), only the columns whose fields differ."""
    columns: dict[str, Any] = {}
    for field, column, value in _COLUMNS:
        if before is not None and getattr(before, field) == getattr(msg, field):
            continue
        got = value(msg)
        if got is not None or column not in _OPTIONAL:
            columns[column] = got
    return columns


# Fields that most changes touch: compared one by one before the whole message is.
_HOT = ("vm_state", "task_state", "power_state", "version", "host", "cell_path")
_HOT_STAMPS = ("updated_at", "launched_at")
_COLUMNS_OF: dict[str, list[tuple[str, Callable[[types_pb2.Instance], Any]]]] = {}
for _field, _column, _value in _COLUMNS:
    _COLUMNS_OF.setdefault(_field, []).append((_column, _value))


def advance(before: types_pb2.Instance, msg: types_pb2.Instance) -> dict[str, Any]:
    """The columns (as :func:`instance_columns` gives them) that differ between
    ``before``, the message a row holds, and ``msg``, its next version; ``before``
    (the caller's own copy) is made equal to ``msg`` on the way."""
    changed: list[str] = []
    for field in _HOT:
        value = getattr(msg, field)
        if getattr(before, field) != value:
            setattr(before, field, value)
            changed.append(field)
    for field in _HOT_STAMPS:
        has = msg.HasField(field)
        if has != before.HasField(field):
            if has:
                getattr(before, field).CopyFrom(getattr(msg, field))
            else:
                before.ClearField(field)
            changed.append(field)
        elif has:
            now, was = getattr(msg, field), getattr(before, field)
            seconds, nanos = now.seconds, now.nanos
            if seconds != was.seconds or nanos != was.nanos:
                was.seconds, was.nanos = seconds, nanos
                changed.append(field)
    columns: dict[str, Any] = {}
    if before != msg:  # more than the usual fields changed
        columns = instance_columns(msg, before)
        before.CopyFrom(msg)
    for field in changed:
        for column, value in _COLUMNS_OF.get(field, ()):
            got = value(msg)
            if got is not None or column not in _OPTIONAL:
                columns[column] = got
    return columns


def instance_fields(msg: types_pb2.Instance) -> dict[str, Any]:
    """Attribute values of an instance row (ORM names, JSON decoded) from its protobuf
    copy (not cell_path): :func:`instance_columns`, for the ORM."""
    fields = instance_columns(msg)
    for column in ("flavor", "metadata", "addresses"):
        fields[column] = json.loads(fields[column])
    fields["metadata_"] = fields.pop("metadata")
    return fields
