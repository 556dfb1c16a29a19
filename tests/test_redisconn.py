"""redis_errors: every failure of redis-py is a store fault (503), never a 500.

The cases are the ones seen during a cluster failover (tests/test_failover.py and
`python -m bench failover`): a slot no node serves yet, and redis-py's asyncio cluster
client failing on a connection another task closed (AttributeError under asyncio's
loop, RuntimeError "the handler is closed" under uvloop, which `tokend serve` runs)."""

from __future__ import annotations

import pytest
from redis.exceptions import ClusterDownError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError

from service.errors import Unavailable
from service.redisconn import redis_errors


@pytest.mark.parametrize(
    "failure",
    [
        RedisConnectionError("Connection closed by server."),
        ClusterDownError("CLUSTERDOWN The cluster is down"),
        SlotNotCoveredError('Slot "907" is not covered by the cluster.'),
        AttributeError("'NoneType' object has no attribute 'writelines'"),
        RuntimeError("unable to perform operation on <TCPTransport closed=True>"),
    ],
    ids=type,
)
def test_a_redis_client_failure_is_unavailable(failure: Exception) -> None:
    with pytest.raises(Unavailable) as raised, redis_errors():
        raise failure
    assert raised.value.__cause__ is failure


def test_what_is_not_the_store_is_not_hidden() -> None:
    with pytest.raises(ZeroDivisionError), redis_errors():
        raise ZeroDivisionError
