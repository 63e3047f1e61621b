"""The flavors every cell starts with, and the images an API cell starts with.

Flavors are known in every cell (capacity units are counted per flavor size);
images live at the top. Both are written only into an empty table.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cellplane.db.models import Flavor, Image

# flavor id, name, vcpus, memory MB, root GB
DEFAULT_FLAVORS = (
    ("1", "m1.tiny", 1, 512, 1),
    ("2", "m1.small", 1, 2048, 20),
    ("3", "m1.medium", 2, 4096, 40),
    ("4", "m1.large", 4, 8192, 80),
    ("5", "m1.xlarge", 8, 16384, 160),
)

# uuid, name, min disk GB, properties
DEFAULT_IMAGES: tuple[tuple[str, str, int, dict[str, str]], ...] = (
    ("5f6a1c0e-0000-4000-8000-000000000001", "cirros", 1, {"hypervisor_type": "kvm"}),
    ("5f6a1c0e-0000-4000-8000-000000000002", "ubuntu-24.04", 10, {}),
    ("5f6a1c0e-0000-4000-8000-000000000003", "xen-appliance", 1, {"hypervisor_type": "xen"}),
    ("5f6a1c0e-0000-4000-8000-000000000004", "broken", 1, {"fail_spawn": "true"}),
)


def seed(sessions: sessionmaker[Session], *, images: bool) -> None:
    """Write the default flavors (and images) into empty tables.

    Processes of one cell may start together: whichever seeds first wins, and
    the others find the rows there.
    """
    try:
        _seed(sessions, images=images)
    except IntegrityError:
        _seed(sessions, images=images)


def _seed(sessions: sessionmaker[Session], *, images: bool) -> None:
    with sessions.begin() as session:
        if not session.scalar(select(func.count()).select_from(Flavor)):
            for flavor_id, name, vcpus, ram, disk in DEFAULT_FLAVORS:
                session.add(
                    Flavor(
                        flavor_id=flavor_id,
                        name=name,
                        vcpus=vcpus,
                        memory_mb=ram,
                        root_gb=disk,
                        ephemeral_gb=0,
                        disabled=False,
                        is_public=True,
                        extra_specs={},
                    )
                )
        if images and not session.scalar(select(func.count()).select_from(Image)):
            for uuid, name, min_disk, properties in DEFAULT_IMAGES:
                session.add(
                    Image(
                        uuid=uuid,
                        name=name,
                        status="active",
                        size_bytes=min_disk * 1024**3 // 8,
                        min_ram_mb=0,
                        min_disk_gb=min_disk,
                        properties=properties,
                        owner=None,
                    )
                )
