"""The cell database: models, engines and sessions, migrations."""

from cellplane.db.engine import create_engine, make_session_factory
from cellplane.db.migrate import check, current, downgrade, upgrade
from cellplane.db.models import (
    Base,
    Cell,
    ComputeNode,
    CreateRequest,
    Flavor,
    Image,
    Instance,
    InstanceAction,
    InstanceActionEvent,
    InstanceChange,
    InstanceFault,
    IpAllocation,
    LinkCursor,
    OutboxEntry,
    PendingClaim,
    Service,
    utcnow,
)

__all__ = [
    "Base",
    "Cell",
    "ComputeNode",
    "CreateRequest",
    "Flavor",
    "Image",
    "Instance",
    "InstanceAction",
    "InstanceActionEvent",
    "InstanceChange",
    "InstanceFault",
    "IpAllocation",
    "LinkCursor",
    "OutboxEntry",
    "PendingClaim",
    "Service",
    "check",
    "create_engine",
    "current",
    "downgrade",
    "make_session_factory",
    "upgrade",
    "utcnow",
]
