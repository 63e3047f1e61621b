"""Local RPC inside one cell over AMQP (kombu): call, cast and fanout on topics.

Roles of a cell talk here the way Nova services did: ``scheduler``,
``compute.<host>``, ``network``, ``cells``. RabbitMQ in production, kombu's
``memory://`` in one process.
"""

from cellplane.amqp.client import DEFAULT_CALL_TIMEOUT, RpcClient
from cellplane.amqp.server import DEFAULT_WORKERS, RpcServer
from cellplane.amqp.transport import DEFAULT_URL, connect

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_URL",
    "DEFAULT_WORKERS",
    "RpcClient",
    "RpcServer",
    "connect",
]
