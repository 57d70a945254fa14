"""Fixtures of the fault suite: a Redis of its own that tests may restart, and a cluster of workers."""
from __future__ import annotations

import shutil

import pytest
from channels.db import database_sync_to_async

from tests.conftest import require_service
from tests.factories import make_user

from .harness import PASSWORD, Cluster, RedisServer


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/faults/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.django_db(transaction=True))


@pytest.fixture
def fault_redis():
    """A redis-server of this test's own (never the run's REDIS_URL: a fault test stops it)."""
    binary = shutil.which("redis-server")
    require_service("Redis", binary is not None, "install redis-server (apt-get install redis-server)")
    server = RedisServer(binary).start()
    yield server
    server.close()


@pytest.fixture
async def sam():
    return await database_sync_to_async(make_user)("sam", PASSWORD)


@pytest.fixture
def cluster(model_server, fault_redis):
    model_server.reset()
    cluster = Cluster(model_server, fault_redis)
    yield cluster
    cluster.stop_all()
    for worker in cluster.workers:
        print(f"--- worker on port {worker.port} ---\n{worker.output()}")  # shown when the test fails
    cluster.close()
