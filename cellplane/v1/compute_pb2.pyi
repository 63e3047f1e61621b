import datetime

from cellplane.v1 import link_pb2 as _link_pb2
from cellplane.v1 import types_pb2 as _types_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_KIND_UNSPECIFIED: _ClassVar[ChangeKind]
    CHANGE_KIND_UPDATED: _ClassVar[ChangeKind]
    CHANGE_KIND_DELETED: _ClassVar[ChangeKind]
    CHANGE_KIND_FAULT: _ClassVar[ChangeKind]
CHANGE_KIND_UNSPECIFIED: ChangeKind
CHANGE_KIND_UPDATED: ChangeKind
CHANGE_KIND_DELETED: ChangeKind
CHANGE_KIND_FAULT: ChangeKind

class CreateInstancesRequest(_message.Message):
    __slots__ = ("name", "flavor_id", "image_id", "count", "scheduler_hints", "idempotency_key", "availability_zone", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    FLAVOR_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_HINTS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_ZONE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    flavor_id: str
    image_id: str
    count: int
    scheduler_hints: _link_pb2.SchedulerHints
    idempotency_key: str
    availability_zone: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., flavor_id: _Optional[str] = ..., image_id: _Optional[str] = ..., count: _Optional[int] = ..., scheduler_hints: _Optional[_Union[_link_pb2.SchedulerHints, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., availability_zone: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateInstancesResponse(_message.Message):
    __slots__ = ("instances", "request_id")
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[_types_pb2.Instance]
    request_id: str
    def __init__(self, instances: _Optional[_Iterable[_Union[_types_pb2.Instance, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetInstanceRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class GetInstanceResponse(_message.Message):
    __slots__ = ("instance",)
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    instance: _types_pb2.Instance
    def __init__(self, instance: _Optional[_Union[_types_pb2.Instance, _Mapping]] = ...) -> None: ...

class ListInstancesRequest(_message.Message):
    __slots__ = ("project_id", "vm_state", "cell_path", "name", "page_size", "page_token", "include_deleted")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    VM_STATE_FIELD_NUMBER: _ClassVar[int]
    CELL_PATH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DELETED_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    vm_state: _types_pb2.VmState
    cell_path: str
    name: str
    page_size: int
    page_token: str
    include_deleted: bool
    def __init__(self, project_id: _Optional[str] = ..., vm_state: _Optional[_Union[_types_pb2.VmState, str]] = ..., cell_path: _Optional[str] = ..., name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_deleted: _Optional[bool] = ...) -> None: ...

class CellReachability(_message.Message):
    __slots__ = ("cell_path", "reachable", "mute", "last_seen")
    CELL_PATH_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    MUTE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    cell_path: str
    reachable: bool
    mute: bool
    last_seen: _timestamp_pb2.Timestamp
    def __init__(self, cell_path: _Optional[str] = ..., reachable: _Optional[bool] = ..., mute: _Optional[bool] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListInstancesResponse(_message.Message):
    __slots__ = ("instances", "next_page_token", "cells")
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedCompositeFieldContainer[_types_pb2.Instance]
    next_page_token: str
    cells: _containers.RepeatedCompositeFieldContainer[CellReachability]
    def __init__(self, instances: _Optional[_Iterable[_Union[_types_pb2.Instance, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., cells: _Optional[_Iterable[_Union[CellReachability, _Mapping]]] = ...) -> None: ...

class DeleteInstanceRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class DeleteInstanceResponse(_message.Message):
    __slots__ = ("instance", "request_id")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    instance: _types_pb2.Instance
    request_id: str
    def __init__(self, instance: _Optional[_Union[_types_pb2.Instance, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class RebootInstanceRequest(_message.Message):
    __slots__ = ("uuid", "hard")
    UUID_FIELD_NUMBER: _ClassVar[int]
    HARD_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    hard: bool
    def __init__(self, uuid: _Optional[str] = ..., hard: _Optional[bool] = ...) -> None: ...

class RebootInstanceResponse(_message.Message):
    __slots__ = ("instance", "request_id")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    instance: _types_pb2.Instance
    request_id: str
    def __init__(self, instance: _Optional[_Union[_types_pb2.Instance, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class RebuildInstanceRequest(_message.Message):
    __slots__ = ("uuid", "image_id", "name")
    UUID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    image_id: str
    name: str
    def __init__(self, uuid: _Optional[str] = ..., image_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class RebuildInstanceResponse(_message.Message):
    __slots__ = ("instance", "request_id")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    instance: _types_pb2.Instance
    request_id: str
    def __init__(self, instance: _Optional[_Union[_types_pb2.Instance, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ResizeInstanceRequest(_message.Message):
    __slots__ = ("uuid", "flavor_id")
    UUID_FIELD_NUMBER: _ClassVar[int]
    FLAVOR_ID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    flavor_id: str
    def __init__(self, uuid: _Optional[str] = ..., flavor_id: _Optional[str] = ...) -> None: ...

class ResizeInstanceResponse(_message.Message):
    __slots__ = ("instance", "request_id")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    instance: _types_pb2.Instance
    request_id: str
    def __init__(self, instance: _Optional[_Union[_types_pb2.Instance, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ConfirmResizeRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class ConfirmResizeResponse(_message.Message):
    __slots__ = ("instance", "request_id")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    instance: _types_pb2.Instance
    request_id: str
    def __init__(self, instance: _Optional[_Union[_types_pb2.Instance, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class RevertResizeRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class RevertResizeResponse(_message.Message):
    __slots__ = ("instance", "request_id")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    instance: _types_pb2.Instance
    request_id: str
    def __init__(self, instance: _Optional[_Union[_types_pb2.Instance, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SnapshotInstanceRequest(_message.Message):
    __slots__ = ("uuid", "image_name")
    UUID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_NAME_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    image_name: str
    def __init__(self, uuid: _Optional[str] = ..., image_name: _Optional[str] = ...) -> None: ...

class SnapshotInstanceResponse(_message.Message):
    __slots__ = ("instance", "request_id", "image")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    instance: _types_pb2.Instance
    request_id: str
    image: _types_pb2.Image
    def __init__(self, instance: _Optional[_Union[_types_pb2.Instance, _Mapping]] = ..., request_id: _Optional[str] = ..., image: _Optional[_Union[_types_pb2.Image, _Mapping]] = ...) -> None: ...

class StartInstanceRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class StartInstanceResponse(_message.Message):
    __slots__ = ("instance", "request_id")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    instance: _types_pb2.Instance
    request_id: str
    def __init__(self, instance: _Optional[_Union[_types_pb2.Instance, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class StopInstanceRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class StopInstanceResponse(_message.Message):
    __slots__ = ("instance", "request_id")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    instance: _types_pb2.Instance
    request_id: str
    def __init__(self, instance: _Optional[_Union[_types_pb2.Instance, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class PauseInstanceRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class PauseInstanceResponse(_message.Message):
    __slots__ = ("instance", "request_id")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    instance: _types_pb2.Instance
    request_id: str
    def __init__(self, instance: _Optional[_Union[_types_pb2.Instance, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class UnpauseInstanceRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class UnpauseInstanceResponse(_message.Message):
    __slots__ = ("instance", "request_id")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    instance: _types_pb2.Instance
    request_id: str
    def __init__(self, instance: _Optional[_Union[_types_pb2.Instance, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SuspendInstanceRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class SuspendInstanceResponse(_message.Message):
    __slots__ = ("instance", "request_id")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    instance: _types_pb2.Instance
    request_id: str
    def __init__(self, instance: _Optional[_Union[_types_pb2.Instance, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ResumeInstanceRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class ResumeInstanceResponse(_message.Message):
    __slots__ = ("instance", "request_id")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    instance: _types_pb2.Instance
    request_id: str
    def __init__(self, instance: _Optional[_Union[_types_pb2.Instance, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ListInstanceActionsRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class ListInstanceActionsResponse(_message.Message):
    __slots__ = ("actions",)
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedCompositeFieldContainer[_types_pb2.InstanceAction]
    def __init__(self, actions: _Optional[_Iterable[_Union[_types_pb2.InstanceAction, _Mapping]]] = ...) -> None: ...

class ListInstanceFaultsRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class ListInstanceFaultsResponse(_message.Message):
    __slots__ = ("faults",)
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    faults: _containers.RepeatedCompositeFieldContainer[_types_pb2.Fault]
    def __init__(self, faults: _Optional[_Iterable[_Union[_types_pb2.Fault, _Mapping]]] = ...) -> None: ...

class ListFlavorsRequest(_message.Message):
    __slots__ = ("include_disabled",)
    INCLUDE_DISABLED_FIELD_NUMBER: _ClassVar[int]
    include_disabled: bool
    def __init__(self, include_disabled: _Optional[bool] = ...) -> None: ...

class ListFlavorsResponse(_message.Message):
    __slots__ = ("flavors",)
    FLAVORS_FIELD_NUMBER: _ClassVar[int]
    flavors: _containers.RepeatedCompositeFieldContainer[_types_pb2.Flavor]
    def __init__(self, flavors: _Optional[_Iterable[_Union[_types_pb2.Flavor, _Mapping]]] = ...) -> None: ...

class ListImagesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListImagesResponse(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_types_pb2.Image]
    def __init__(self, images: _Optional[_Iterable[_Union[_types_pb2.Image, _Mapping]]] = ...) -> None: ...

class WatchInstancesRequest(_message.Message):
    __slots__ = ("from_revision", "project_id")
    FROM_REVISION_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    from_revision: int
    project_id: str
    def __init__(self, from_revision: _Optional[int] = ..., project_id: _Optional[str] = ...) -> None: ...

class WatchInstancesResponse(_message.Message):
    __slots__ = ("revision", "kind", "instance")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    revision: int
    kind: ChangeKind
    instance: _types_pb2.Instance
    def __init__(self, revision: _Optional[int] = ..., kind: _Optional[_Union[ChangeKind, str]] = ..., instance: _Optional[_Union[_types_pb2.Instance, _Mapping]] = ...) -> None: ...
