import datetime

from cellplane.v1 import types_pb2 as _types_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnvelopeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENVELOPE_KIND_UNSPECIFIED: _ClassVar[EnvelopeKind]
    ENVELOPE_KIND_TARGETED: _ClassVar[EnvelopeKind]
    ENVELOPE_KIND_BROADCAST: _ClassVar[EnvelopeKind]
    ENVELOPE_KIND_RESPONSE: _ClassVar[EnvelopeKind]

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_UP: _ClassVar[Direction]
    DIRECTION_DOWN: _ClassVar[Direction]
ENVELOPE_KIND_UNSPECIFIED: EnvelopeKind
ENVELOPE_KIND_TARGETED: EnvelopeKind
ENVELOPE_KIND_BROADCAST: EnvelopeKind
ENVELOPE_KIND_RESPONSE: EnvelopeKind
DIRECTION_UNSPECIFIED: Direction
DIRECTION_UP: Direction
DIRECTION_DOWN: Direction

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "batch")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    batch: EnvelopeBatch
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., batch: _Optional[_Union[EnvelopeBatch, _Mapping]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("hello", "batch")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    batch: EnvelopeBatch
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., batch: _Optional[_Union[EnvelopeBatch, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("cell", "protocol_version", "epoch", "peer_epoch", "peer_last_seq", "path", "features", "max_message_bytes")
    CELL_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PEER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    PEER_LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    cell: str
    protocol_version: int
    epoch: str
    peer_epoch: str
    peer_last_seq: int
    path: str
    features: _containers.RepeatedScalarFieldContainer[str]
    max_message_bytes: int
    def __init__(self, cell: _Optional[str] = ..., protocol_version: _Optional[int] = ..., epoch: _Optional[str] = ..., peer_epoch: _Optional[str] = ..., peer_last_seq: _Optional[int] = ..., path: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class EnvelopeBatch(_message.Message):
    __slots__ = ("envelopes", "ack")
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    envelopes: _containers.RepeatedCompositeFieldContainer[Envelope]
    ack: int
    def __init__(self, envelopes: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ..., ack: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("id", "seq", "kind", "direction", "routing_path", "target_path", "hop_count", "max_hops", "need_response", "deadline_ms", "trace_id", "run_locally", "response_to", "build_request", "instance_action", "instance_update", "instance_destroyed", "instance_fault", "capability_report", "capacity_report", "sync_request", "sync_digest", "service_query", "response", "echo", "instance_updates")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    ROUTING_PATH_FIELD_NUMBER: _ClassVar[int]
    TARGET_PATH_FIELD_NUMBER: _ClassVar[int]
    HOP_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_HOPS_FIELD_NUMBER: _ClassVar[int]
    NEED_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_LOCALLY_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TO_FIELD_NUMBER: _ClassVar[int]
    BUILD_REQUEST_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ACTION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UPDATE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_DESTROYED_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FAULT_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_REPORT_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_REPORT_FIELD_NUMBER: _ClassVar[int]
    SYNC_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SYNC_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SERVICE_QUERY_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ECHO_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UPDATES_FIELD_NUMBER: _ClassVar[int]
    id: str
    seq: int
    kind: EnvelopeKind
    direction: Direction
    routing_path: str
    target_path: str
    hop_count: int
    max_hops: int
    need_response: bool
    deadline_ms: int
    trace_id: str
    run_locally: bool
    response_to: str
    build_request: BuildRequest
    instance_action: InstanceActionRequest
    instance_update: InstanceUpdate
    instance_destroyed: InstanceDestroyed
    instance_fault: InstanceFaultReport
    capability_report: CapabilityReport
    capacity_report: CapacityReport
    sync_request: SyncRequest
    sync_digest: SyncDigest
    service_query: ServiceQuery
    response: Response
    echo: Echo
    instance_updates: InstanceUpdates
    def __init__(self, id: _Optional[str] = ..., seq: _Optional[int] = ..., kind: _Optional[_Union[EnvelopeKind, str]] = ..., direction: _Optional[_Union[Direction, str]] = ..., routing_path: _Optional[str] = ..., target_path: _Optional[str] = ..., hop_count: _Optional[int] = ..., max_hops: _Optional[int] = ..., need_response: _Optional[bool] = ..., deadline_ms: _Optional[int] = ..., trace_id: _Optional[str] = ..., run_locally: _Optional[bool] = ..., response_to: _Optional[str] = ..., build_request: _Optional[_Union[BuildRequest, _Mapping]] = ..., instance_action: _Optional[_Union[InstanceActionRequest, _Mapping]] = ..., instance_update: _Optional[_Union[InstanceUpdate, _Mapping]] = ..., instance_destroyed: _Optional[_Union[InstanceDestroyed, _Mapping]] = ..., instance_fault: _Optional[_Union[InstanceFaultReport, _Mapping]] = ..., capability_report: _Optional[_Union[CapabilityReport, _Mapping]] = ..., capacity_report: _Optional[_Union[CapacityReport, _Mapping]] = ..., sync_request: _Optional[_Union[SyncRequest, _Mapping]] = ..., sync_digest: _Optional[_Union[SyncDigest, _Mapping]] = ..., service_query: _Optional[_Union[ServiceQuery, _Mapping]] = ..., response: _Optional[_Union[Response, _Mapping]] = ..., echo: _Optional[_Union[Echo, _Mapping]] = ..., instance_updates: _Optional[_Union[InstanceUpdates, _Mapping]] = ...) -> None: ...

class BuildRequest(_message.Message):
    __slots__ = ("instances", "flavor", "image", "hints", "tried_cells", "retries_left", "request_id", "request_ids")
    class RequestIdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    FLAVOR_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    HINTS_FIELD_NUMBER: _ClassVar[int]
    TRIED_CELLS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_LEFT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[_types_pb2.Instance]
    flavor: _types_pb2.Flavor
    image: _types_pb2.Image
    hints: SchedulerHints
    tried_cells: _containers.RepeatedScalarFieldContainer[str]
    retries_left: int
    request_id: str
    request_ids: _containers.ScalarMap[str, str]
    def __init__(self, instances: _Optional[_Iterable[_Union[_types_pb2.Instance, _Mapping]]] = ..., flavor: _Optional[_Union[_types_pb2.Flavor, _Mapping]] = ..., image: _Optional[_Union[_types_pb2.Image, _Mapping]] = ..., hints: _Optional[_Union[SchedulerHints, _Mapping]] = ..., tried_cells: _Optional[_Iterable[str]] = ..., retries_left: _Optional[int] = ..., request_id: _Optional[str] = ..., request_ids: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SchedulerHints(_message.Message):
    __slots__ = ("target_cell", "different_cell", "group", "group_policy", "same_host", "different_host")
    TARGET_CELL_FIELD_NUMBER: _ClassVar[int]
    DIFFERENT_CELL_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    GROUP_POLICY_FIELD_NUMBER: _ClassVar[int]
    SAME_HOST_FIELD_NUMBER: _ClassVar[int]
    DIFFERENT_HOST_FIELD_NUMBER: _ClassVar[int]
    target_cell: str
    different_cell: _containers.RepeatedScalarFieldContainer[str]
    group: str
    group_policy: str
    same_host: _containers.RepeatedScalarFieldContainer[str]
    different_host: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, target_cell: _Optional[str] = ..., different_cell: _Optional[_Iterable[str]] = ..., group: _Optional[str] = ..., group_policy: _Optional[str] = ..., same_host: _Optional[_Iterable[str]] = ..., different_host: _Optional[_Iterable[str]] = ...) -> None: ...

class InstanceActionRequest(_message.Message):
    __slots__ = ("instance_uuid", "action", "request_id", "hard", "image_id", "flavor", "snapshot_name", "project_id", "user_id")
    INSTANCE_UUID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HARD_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    FLAVOR_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_NAME_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    instance_uuid: str
    action: str
    request_id: str
    hard: bool
    image_id: str
    flavor: _types_pb2.Flavor
    snapshot_name: str
    project_id: str
    user_id: str
    def __init__(self, instance_uuid: _Optional[str] = ..., action: _Optional[str] = ..., request_id: _Optional[str] = ..., hard: _Optional[bool] = ..., image_id: _Optional[str] = ..., flavor: _Optional[_Union[_types_pb2.Flavor, _Mapping]] = ..., snapshot_name: _Optional[str] = ..., project_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class InstanceUpdate(_message.Message):
    __slots__ = ("instance",)
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    instance: _types_pb2.Instance
    def __init__(self, instance: _Optional[_Union[_types_pb2.Instance, _Mapping]] = ...) -> None: ...

class InstanceUpdates(_message.Message):
    __slots__ = ("instances",)
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[_types_pb2.Instance]
    def __init__(self, instances: _Optional[_Iterable[_Union[_types_pb2.Instance, _Mapping]]] = ...) -> None: ...

class InstanceDestroyed(_message.Message):
    __slots__ = ("instance_uuid", "version", "cell_path")
    INSTANCE_UUID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CELL_PATH_FIELD_NUMBER: _ClassVar[int]
    instance_uuid: str
    version: int
    cell_path: str
    def __init__(self, instance_uuid: _Optional[str] = ..., version: _Optional[int] = ..., cell_path: _Optional[str] = ...) -> None: ...

class InstanceFaultReport(_message.Message):
    __slots__ = ("instance_uuid", "version", "fault")
    INSTANCE_UUID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FAULT_FIELD_NUMBER: _ClassVar[int]
    instance_uuid: str
    version: int
    fault: _types_pb2.Fault
    def __init__(self, instance_uuid: _Optional[str] = ..., version: _Optional[int] = ..., fault: _Optional[_Union[_types_pb2.Fault, _Mapping]] = ...) -> None: ...

class CapabilityReport(_message.Message):
    __slots__ = ("cell_path", "capabilities", "reported_at")
    CELL_PATH_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    cell_path: str
    capabilities: _containers.RepeatedCompositeFieldContainer[_types_pb2.Capability]
    reported_at: _timestamp_pb2.Timestamp
    def __init__(self, cell_path: _Optional[str] = ..., capabilities: _Optional[_Iterable[_Union[_types_pb2.Capability, _Mapping]]] = ..., reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CapacityReport(_message.Message):
    __slots__ = ("cell_path", "capacity", "reported_at", "unreachable", "cells")
    CELL_PATH_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    cell_path: str
    capacity: _types_pb2.Capacity
    reported_at: _timestamp_pb2.Timestamp
    unreachable: _containers.RepeatedScalarFieldContainer[str]
    cells: _containers.RepeatedCompositeFieldContainer[OwnCapacity]
    def __init__(self, cell_path: _Optional[str] = ..., capacity: _Optional[_Union[_types_pb2.Capacity, _Mapping]] = ..., reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., unreachable: _Optional[_Iterable[str]] = ..., cells: _Optional[_Iterable[_Union[OwnCapacity, _Mapping]]] = ...) -> None: ...

class OwnCapacity(_message.Message):
    __slots__ = ("cell", "capacity")
    CELL_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    cell: str
    capacity: _types_pb2.Capacity
    def __init__(self, cell: _Optional[str] = ..., capacity: _Optional[_Union[_types_pb2.Capacity, _Mapping]] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("bucket_count", "buckets", "full")
    BUCKET_COUNT_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    bucket_count: int
    buckets: _containers.RepeatedScalarFieldContainer[int]
    full: bool
    def __init__(self, bucket_count: _Optional[int] = ..., buckets: _Optional[_Iterable[int]] = ..., full: _Optional[bool] = ...) -> None: ...

class SyncDigest(_message.Message):
    __slots__ = ("cell_path", "bucket_count", "buckets")
    CELL_PATH_FIELD_NUMBER: _ClassVar[int]
    BUCKET_COUNT_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    cell_path: str
    bucket_count: int
    buckets: _containers.RepeatedCompositeFieldContainer[BucketDigest]
    def __init__(self, cell_path: _Optional[str] = ..., bucket_count: _Optional[int] = ..., buckets: _Optional[_Iterable[_Union[BucketDigest, _Mapping]]] = ...) -> None: ...

class BucketDigest(_message.Message):
    __slots__ = ("bucket", "digest", "count")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    bucket: int
    digest: bytes
    count: int
    def __init__(self, bucket: _Optional[int] = ..., digest: _Optional[bytes] = ..., count: _Optional[int] = ...) -> None: ...

class ServiceQuery(_message.Message):
    __slots__ = ("what", "role")
    WHAT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    what: str
    role: str
    def __init__(self, what: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class ServiceInfo(_message.Message):
    __slots__ = ("host", "role", "disabled", "up", "last_heartbeat")
    HOST_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    host: str
    role: str
    disabled: bool
    up: bool
    last_heartbeat: _timestamp_pb2.Timestamp
    def __init__(self, host: _Optional[str] = ..., role: _Optional[str] = ..., disabled: _Optional[bool] = ..., up: _Optional[bool] = ..., last_heartbeat: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CellResult]
    def __init__(self, results: _Optional[_Iterable[_Union[CellResult, _Mapping]]] = ...) -> None: ...

class CellResult(_message.Message):
    __slots__ = ("cell_path", "status", "answered", "instance", "services", "digest", "echo", "build", "sync", "node")
    CELL_PATH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ECHO_FIELD_NUMBER: _ClassVar[int]
    BUILD_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    cell_path: str
    status: _types_pb2.Status
    answered: bool
    instance: _types_pb2.Instance
    services: ServiceList
    digest: SyncDigest
    echo: Echo
    build: BuildAccepted
    sync: SyncResult
    node: _types_pb2.CellNode
    def __init__(self, cell_path: _Optional[str] = ..., status: _Optional[_Union[_types_pb2.Status, _Mapping]] = ..., answered: _Optional[bool] = ..., instance: _Optional[_Union[_types_pb2.Instance, _Mapping]] = ..., services: _Optional[_Union[ServiceList, _Mapping]] = ..., digest: _Optional[_Union[SyncDigest, _Mapping]] = ..., echo: _Optional[_Union[Echo, _Mapping]] = ..., build: _Optional[_Union[BuildAccepted, _Mapping]] = ..., sync: _Optional[_Union[SyncResult, _Mapping]] = ..., node: _Optional[_Union[_types_pb2.CellNode, _Mapping]] = ...) -> None: ...

class ServiceList(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceInfo]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceInfo, _Mapping]]] = ...) -> None: ...

class BuildAccepted(_message.Message):
    __slots__ = ("instance_uuids", "cell_path")
    INSTANCE_UUIDS_FIELD_NUMBER: _ClassVar[int]
    CELL_PATH_FIELD_NUMBER: _ClassVar[int]
    instance_uuids: _containers.RepeatedScalarFieldContainer[str]
    cell_path: str
    def __init__(self, instance_uuids: _Optional[_Iterable[str]] = ..., cell_path: _Optional[str] = ...) -> None: ...

class SyncResult(_message.Message):
    __slots__ = ("buckets_compared", "buckets_resent", "instances_resent")
    BUCKETS_COMPARED_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_RESENT_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_RESENT_FIELD_NUMBER: _ClassVar[int]
    buckets_compared: int
    buckets_resent: int
    instances_resent: int
    def __init__(self, buckets_compared: _Optional[int] = ..., buckets_resent: _Optional[int] = ..., instances_resent: _Optional[int] = ...) -> None: ...

class Echo(_message.Message):
    __slots__ = ("data", "sequence")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    sequence: int
    def __init__(self, data: _Optional[bytes] = ..., sequence: _Optional[int] = ...) -> None: ...
