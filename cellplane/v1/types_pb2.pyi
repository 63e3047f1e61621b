import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VmState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VM_STATE_UNSPECIFIED: _ClassVar[VmState]
    VM_STATE_BUILDING: _ClassVar[VmState]
    VM_STATE_ACTIVE: _ClassVar[VmState]
    VM_STATE_STOPPED: _ClassVar[VmState]
    VM_STATE_PAUSED: _ClassVar[VmState]
    VM_STATE_SUSPENDED: _ClassVar[VmState]
    VM_STATE_RESIZED: _ClassVar[VmState]
    VM_STATE_ERROR: _ClassVar[VmState]
    VM_STATE_DELETED: _ClassVar[VmState]
    VM_STATE_SOFT_DELETED: _ClassVar[VmState]
    VM_STATE_RESCUED: _ClassVar[VmState]
    VM_STATE_SHELVED: _ClassVar[VmState]

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    TASK_STATE_SCHEDULING: _ClassVar[TaskState]
    TASK_STATE_NETWORKING: _ClassVar[TaskState]
    TASK_STATE_SPAWNING: _ClassVar[TaskState]
    TASK_STATE_REBOOTING: _ClassVar[TaskState]
    TASK_STATE_REBOOTING_HARD: _ClassVar[TaskState]
    TASK_STATE_REBUILDING: _ClassVar[TaskState]
    TASK_STATE_RESIZE_PREP: _ClassVar[TaskState]
    TASK_STATE_RESIZE_MIGRATING: _ClassVar[TaskState]
    TASK_STATE_RESIZE_FINISH: _ClassVar[TaskState]
    TASK_STATE_RESIZE_CONFIRMING: _ClassVar[TaskState]
    TASK_STATE_RESIZE_REVERTING: _ClassVar[TaskState]
    TASK_STATE_IMAGE_SNAPSHOT: _ClassVar[TaskState]
    TASK_STATE_POWERING_OFF: _ClassVar[TaskState]
    TASK_STATE_POWERING_ON: _ClassVar[TaskState]
    TASK_STATE_PAUSING: _ClassVar[TaskState]
    TASK_STATE_UNPAUSING: _ClassVar[TaskState]
    TASK_STATE_SUSPENDING: _ClassVar[TaskState]
    TASK_STATE_RESUMING: _ClassVar[TaskState]
    TASK_STATE_DELETING: _ClassVar[TaskState]

class PowerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POWER_STATE_UNSPECIFIED: _ClassVar[PowerState]
    POWER_STATE_RUNNING: _ClassVar[PowerState]
    POWER_STATE_PAUSED: _ClassVar[PowerState]
    POWER_STATE_SHUTDOWN: _ClassVar[PowerState]
    POWER_STATE_CRASHED: _ClassVar[PowerState]
    POWER_STATE_SUSPENDED: _ClassVar[PowerState]

class LinkState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LINK_STATE_UNSPECIFIED: _ClassVar[LinkState]
    LINK_STATE_DOWN: _ClassVar[LinkState]
    LINK_STATE_CONNECTING: _ClassVar[LinkState]
    LINK_STATE_UP: _ClassVar[LinkState]

class CellRelation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CELL_RELATION_UNSPECIFIED: _ClassVar[CellRelation]
    CELL_RELATION_PARENT: _ClassVar[CellRelation]
    CELL_RELATION_CHILD: _ClassVar[CellRelation]
VM_STATE_UNSPECIFIED: VmState
VM_STATE_BUILDING: VmState
VM_STATE_ACTIVE: VmState
VM_STATE_STOPPED: VmState
VM_STATE_PAUSED: VmState
VM_STATE_SUSPENDED: VmState
VM_STATE_RESIZED: VmState
VM_STATE_ERROR: VmState
VM_STATE_DELETED: VmState
VM_STATE_SOFT_DELETED: VmState
VM_STATE_RESCUED: VmState
VM_STATE_SHELVED: VmState
TASK_STATE_UNSPECIFIED: TaskState
TASK_STATE_SCHEDULING: TaskState
TASK_STATE_NETWORKING: TaskState
TASK_STATE_SPAWNING: TaskState
TASK_STATE_REBOOTING: TaskState
TASK_STATE_REBOOTING_HARD: TaskState
TASK_STATE_REBUILDING: TaskState
TASK_STATE_RESIZE_PREP: TaskState
TASK_STATE_RESIZE_MIGRATING: TaskState
TASK_STATE_RESIZE_FINISH: TaskState
TASK_STATE_RESIZE_CONFIRMING: TaskState
TASK_STATE_RESIZE_REVERTING: TaskState
TASK_STATE_IMAGE_SNAPSHOT: TaskState
TASK_STATE_POWERING_OFF: TaskState
TASK_STATE_POWERING_ON: TaskState
TASK_STATE_PAUSING: TaskState
TASK_STATE_UNPAUSING: TaskState
TASK_STATE_SUSPENDING: TaskState
TASK_STATE_RESUMING: TaskState
TASK_STATE_DELETING: TaskState
POWER_STATE_UNSPECIFIED: PowerState
POWER_STATE_RUNNING: PowerState
POWER_STATE_PAUSED: PowerState
POWER_STATE_SHUTDOWN: PowerState
POWER_STATE_CRASHED: PowerState
POWER_STATE_SUSPENDED: PowerState
LINK_STATE_UNSPECIFIED: LinkState
LINK_STATE_DOWN: LinkState
LINK_STATE_CONNECTING: LinkState
LINK_STATE_UP: LinkState
CELL_RELATION_UNSPECIFIED: CellRelation
CELL_RELATION_PARENT: CellRelation
CELL_RELATION_CHILD: CellRelation

class Address(_message.Message):
    __slots__ = ("pool", "address", "version")
    POOL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    pool: str
    address: str
    version: int
    def __init__(self, pool: _Optional[str] = ..., address: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class Instance(_message.Message):
    __slots__ = ("uuid", "name", "project_id", "user_id", "flavor", "image_id", "vm_state", "task_state", "power_state", "version", "cell_path", "host", "addresses", "availability_zone", "metadata", "created_at", "updated_at", "launched_at", "deleted", "fault", "stale")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FLAVOR_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    VM_STATE_FIELD_NUMBER: _ClassVar[int]
    TASK_STATE_FIELD_NUMBER: _ClassVar[int]
    POWER_STATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CELL_PATH_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_ZONE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAUNCHED_AT_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    FAULT_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    name: str
    project_id: str
    user_id: str
    flavor: Flavor
    image_id: str
    vm_state: VmState
    task_state: TaskState
    power_state: PowerState
    version: int
    cell_path: str
    host: str
    addresses: _containers.RepeatedCompositeFieldContainer[Address]
    availability_zone: str
    metadata: _containers.ScalarMap[str, str]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    launched_at: _timestamp_pb2.Timestamp
    deleted: bool
    fault: Fault
    stale: bool
    def __init__(self, uuid: _Optional[str] = ..., name: _Optional[str] = ..., project_id: _Optional[str] = ..., user_id: _Optional[str] = ..., flavor: _Optional[_Union[Flavor, _Mapping]] = ..., image_id: _Optional[str] = ..., vm_state: _Optional[_Union[VmState, str]] = ..., task_state: _Optional[_Union[TaskState, str]] = ..., power_state: _Optional[_Union[PowerState, str]] = ..., version: _Optional[int] = ..., cell_path: _Optional[str] = ..., host: _Optional[str] = ..., addresses: _Optional[_Iterable[_Union[Address, _Mapping]]] = ..., availability_zone: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., launched_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deleted: _Optional[bool] = ..., fault: _Optional[_Union[Fault, _Mapping]] = ..., stale: _Optional[bool] = ...) -> None: ...

class Flavor(_message.Message):
    __slots__ = ("id", "name", "vcpus", "memory_mb", "root_gb", "ephemeral_gb", "disabled", "is_public", "extra_specs")
    class ExtraSpecsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    ROOT_GB_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_GB_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    IS_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    EXTRA_SPECS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    vcpus: int
    memory_mb: int
    root_gb: int
    ephemeral_gb: int
    disabled: bool
    is_public: bool
    extra_specs: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., vcpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., root_gb: _Optional[int] = ..., ephemeral_gb: _Optional[int] = ..., disabled: _Optional[bool] = ..., is_public: _Optional[bool] = ..., extra_specs: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("id", "name", "status", "size_bytes", "min_ram_mb", "min_disk_gb", "properties", "owner", "created_at")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIN_RAM_MB_FIELD_NUMBER: _ClassVar[int]
    MIN_DISK_GB_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    status: str
    size_bytes: int
    min_ram_mb: int
    min_disk_gb: int
    properties: _containers.ScalarMap[str, str]
    owner: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[str] = ..., size_bytes: _Optional[int] = ..., min_ram_mb: _Optional[int] = ..., min_disk_gb: _Optional[int] = ..., properties: _Optional[_Mapping[str, str]] = ..., owner: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Fault(_message.Message):
    __slots__ = ("code", "message", "details", "host", "created_at")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    details: str
    host: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., details: _Optional[str] = ..., host: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class InstanceAction(_message.Message):
    __slots__ = ("request_id", "instance_uuid", "action", "project_id", "user_id", "start_time", "finish_time", "message", "events")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UUID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    instance_uuid: str
    action: str
    project_id: str
    user_id: str
    start_time: _timestamp_pb2.Timestamp
    finish_time: _timestamp_pb2.Timestamp
    message: str
    events: _containers.RepeatedCompositeFieldContainer[InstanceActionEvent]
    def __init__(self, request_id: _Optional[str] = ..., instance_uuid: _Optional[str] = ..., action: _Optional[str] = ..., project_id: _Optional[str] = ..., user_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ..., events: _Optional[_Iterable[_Union[InstanceActionEvent, _Mapping]]] = ...) -> None: ...

class InstanceActionEvent(_message.Message):
    __slots__ = ("event", "start_time", "finish_time", "result", "host", "details")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    event: str
    start_time: _timestamp_pb2.Timestamp
    finish_time: _timestamp_pb2.Timestamp
    result: str
    host: str
    details: str
    def __init__(self, event: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., result: _Optional[str] = ..., host: _Optional[str] = ..., details: _Optional[str] = ...) -> None: ...

class Capability(_message.Message):
    __slots__ = ("name", "values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class FlavorUnits(_message.Message):
    __slots__ = ("memory_mb", "disk_gb", "units")
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    DISK_GB_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    memory_mb: int
    disk_gb: int
    units: int
    def __init__(self, memory_mb: _Optional[int] = ..., disk_gb: _Optional[int] = ..., units: _Optional[int] = ...) -> None: ...

class Capacity(_message.Message):
    __slots__ = ("ram_free_mb", "ram_total_mb", "disk_free_gb", "disk_total_gb", "vcpus_free", "vcpus_total", "ram_units", "disk_units")
    RAM_FREE_MB_FIELD_NUMBER: _ClassVar[int]
    RAM_TOTAL_MB_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_GB_FIELD_NUMBER: _ClassVar[int]
    DISK_TOTAL_GB_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FREE_FIELD_NUMBER: _ClassVar[int]
    VCPUS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RAM_UNITS_FIELD_NUMBER: _ClassVar[int]
    DISK_UNITS_FIELD_NUMBER: _ClassVar[int]
    ram_free_mb: int
    ram_total_mb: int
    disk_free_gb: int
    disk_total_gb: int
    vcpus_free: int
    vcpus_total: int
    ram_units: _containers.RepeatedCompositeFieldContainer[FlavorUnits]
    disk_units: _containers.RepeatedCompositeFieldContainer[FlavorUnits]
    def __init__(self, ram_free_mb: _Optional[int] = ..., ram_total_mb: _Optional[int] = ..., disk_free_gb: _Optional[int] = ..., disk_total_gb: _Optional[int] = ..., vcpus_free: _Optional[int] = ..., vcpus_total: _Optional[int] = ..., ram_units: _Optional[_Iterable[_Union[FlavorUnits, _Mapping]]] = ..., disk_units: _Optional[_Iterable[_Union[FlavorUnits, _Mapping]]] = ...) -> None: ...

class Cell(_message.Message):
    __slots__ = ("name", "relation", "address", "tls_identity", "weight_offset", "weight_scale", "disabled", "capabilities", "capacity", "last_seen", "link_state", "mute", "path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TLS_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_SCALE_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LINK_STATE_FIELD_NUMBER: _ClassVar[int]
    MUTE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    relation: CellRelation
    address: str
    tls_identity: str
    weight_offset: float
    weight_scale: float
    disabled: bool
    capabilities: _containers.RepeatedCompositeFieldContainer[Capability]
    capacity: Capacity
    last_seen: _timestamp_pb2.Timestamp
    link_state: LinkState
    mute: bool
    path: str
    def __init__(self, name: _Optional[str] = ..., relation: _Optional[_Union[CellRelation, str]] = ..., address: _Optional[str] = ..., tls_identity: _Optional[str] = ..., weight_offset: _Optional[float] = ..., weight_scale: _Optional[float] = ..., disabled: _Optional[bool] = ..., capabilities: _Optional[_Iterable[_Union[Capability, _Mapping]]] = ..., capacity: _Optional[_Union[Capacity, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., link_state: _Optional[_Union[LinkState, str]] = ..., mute: _Optional[bool] = ..., path: _Optional[str] = ...) -> None: ...

class CellNode(_message.Message):
    __slots__ = ("name", "path", "link_state", "mute", "last_seen", "capabilities", "capacity", "children")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    LINK_STATE_FIELD_NUMBER: _ClassVar[int]
    MUTE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    link_state: LinkState
    mute: bool
    last_seen: _timestamp_pb2.Timestamp
    capabilities: _containers.RepeatedCompositeFieldContainer[Capability]
    capacity: Capacity
    children: _containers.RepeatedCompositeFieldContainer[CellNode]
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., link_state: _Optional[_Union[LinkState, str]] = ..., mute: _Optional[bool] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., capabilities: _Optional[_Iterable[_Union[Capability, _Mapping]]] = ..., capacity: _Optional[_Union[Capacity, _Mapping]] = ..., children: _Optional[_Iterable[_Union[CellNode, _Mapping]]] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...
