from cellplane.v1 import link_pb2 as _link_pb2
from cellplane.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListCellsRequest(_message.Message):
    __slots__ = ("relation",)
    RELATION_FIELD_NUMBER: _ClassVar[int]
    relation: _types_pb2.CellRelation
    def __init__(self, relation: _Optional[_Union[_types_pb2.CellRelation, str]] = ...) -> None: ...

class ListCellsResponse(_message.Message):
    __slots__ = ("cell", "path", "cells")
    CELL_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    cell: str
    path: str
    cells: _containers.RepeatedCompositeFieldContainer[_types_pb2.Cell]
    def __init__(self, cell: _Optional[str] = ..., path: _Optional[str] = ..., cells: _Optional[_Iterable[_Union[_types_pb2.Cell, _Mapping]]] = ...) -> None: ...

class GetCellRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetCellResponse(_message.Message):
    __slots__ = ("cell",)
    CELL_FIELD_NUMBER: _ClassVar[int]
    cell: _types_pb2.Cell
    def __init__(self, cell: _Optional[_Union[_types_pb2.Cell, _Mapping]] = ...) -> None: ...

class AddCellRequest(_message.Message):
    __slots__ = ("cell",)
    CELL_FIELD_NUMBER: _ClassVar[int]
    cell: _types_pb2.Cell
    def __init__(self, cell: _Optional[_Union[_types_pb2.Cell, _Mapping]] = ...) -> None: ...

class AddCellResponse(_message.Message):
    __slots__ = ("cell",)
    CELL_FIELD_NUMBER: _ClassVar[int]
    cell: _types_pb2.Cell
    def __init__(self, cell: _Optional[_Union[_types_pb2.Cell, _Mapping]] = ...) -> None: ...

class UpdateCellRequest(_message.Message):
    __slots__ = ("cell", "update_mask")
    CELL_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    cell: _types_pb2.Cell
    update_mask: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cell: _Optional[_Union[_types_pb2.Cell, _Mapping]] = ..., update_mask: _Optional[_Iterable[str]] = ...) -> None: ...

class UpdateCellResponse(_message.Message):
    __slots__ = ("cell",)
    CELL_FIELD_NUMBER: _ClassVar[int]
    cell: _types_pb2.Cell
    def __init__(self, cell: _Optional[_Union[_types_pb2.Cell, _Mapping]] = ...) -> None: ...

class RemoveCellRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveCellResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCapacitiesRequest(_message.Message):
    __slots__ = ("cell_path",)
    CELL_PATH_FIELD_NUMBER: _ClassVar[int]
    cell_path: str
    def __init__(self, cell_path: _Optional[str] = ...) -> None: ...

class CellCapacity(_message.Message):
    __slots__ = ("cell_path", "capacity", "capabilities", "mute")
    CELL_PATH_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    MUTE_FIELD_NUMBER: _ClassVar[int]
    cell_path: str
    capacity: _types_pb2.Capacity
    capabilities: _containers.RepeatedCompositeFieldContainer[_types_pb2.Capability]
    mute: bool
    def __init__(self, cell_path: _Optional[str] = ..., capacity: _Optional[_Union[_types_pb2.Capacity, _Mapping]] = ..., capabilities: _Optional[_Iterable[_Union[_types_pb2.Capability, _Mapping]]] = ..., mute: _Optional[bool] = ...) -> None: ...

class GetCapacitiesResponse(_message.Message):
    __slots__ = ("cells",)
    CELLS_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedCompositeFieldContainer[CellCapacity]
    def __init__(self, cells: _Optional[_Iterable[_Union[CellCapacity, _Mapping]]] = ...) -> None: ...

class SyncInstancesRequest(_message.Message):
    __slots__ = ("cell_path", "full")
    CELL_PATH_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    cell_path: str
    full: bool
    def __init__(self, cell_path: _Optional[str] = ..., full: _Optional[bool] = ...) -> None: ...

class SyncInstancesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_link_pb2.CellResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_link_pb2.CellResult, _Mapping]]] = ...) -> None: ...

class GetTreeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTreeResponse(_message.Message):
    __slots__ = ("root",)
    ROOT_FIELD_NUMBER: _ClassVar[int]
    root: _types_pb2.CellNode
    def __init__(self, root: _Optional[_Union[_types_pb2.CellNode, _Mapping]] = ...) -> None: ...
