"""The codec's own timestamp conversion agrees with protobuf's FromDatetime/ToDatetime."""

import random
from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from cellplane.db.models import Instance
from cellplane.federation import codec


def test_set_timestamp_and_back_agree_with_protobuf() -> None:
    rng = random.Random(4)
    india = timezone(timedelta(hours=5, minutes=30))
    for _ in range(2000):
        aware = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
            microseconds=rng.randint(-(10**16), 10**17)
        )
        for value in (aware, aware.replace(tzinfo=None), aware.astimezone(india)):
            expected = Timestamp()
            expected.FromDatetime(value)
            got = codec.timestamp(value)
            assert got is not None
            assert (got.seconds, got.nanos) == (expected.seconds, expected.nanos), value
            msg = codec.instance_to_proto(_row(value))
            assert msg.created_at == expected
            fields = codec.instance_fields(msg)
            assert fields["created_at"] == expected.ToDatetime(tzinfo=UTC)


def test_missing_times_stay_missing() -> None:
    assert codec.timestamp(None) is None
    row = _row(datetime(2026, 1, 2, 3, 4, 5, 678901))
    row.launched_at = None
    msg = codec.instance_to_proto(row)
    assert not msg.HasField("launched_at")
    assert "launched_at" not in codec.instance_fields(msg)


def _row(when: datetime) -> Instance:
    return Instance(
        uuid="00000000-0000-4000-8000-000000000001",
        name="x",
        project_id="p",
        user_id="u",
        flavor_id="1",
        flavor={"id": "1"},
        image_id="i",
        vm_state="active",
        task_state=None,
        power_state=1,
        cell_path="c",
        version=1,
        deleted=False,
        created_at=when,
        updated_at=when,
        launched_at=when,
    )
