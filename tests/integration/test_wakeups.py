"""Wake-up flags on the run's real Redis: one message per queue while one is pending."""

from __future__ import annotations

import pytest
import redis

from billing_core.db.wakeups import Wakeups

pytestmark = pytest.mark.integration

KEY = "billing:wake:test"


@pytest.fixture
def client(redis_db_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_db_url)
    client.delete(KEY)
    return client


def test_only_the_first_sender_is_told_to_send_until_a_task_clears_the_flag(client):
    web_1, web_2, task = Wakeups(client), Wakeups(client), Wakeups(client)

    assert web_1.arm(KEY) is True
    assert web_2.arm(KEY) is False
    assert web_1.arm(KEY) is False
    assert 0 < client.ttl(KEY) <= 30

    task.disarm(KEY)
    assert web_2.arm(KEY) is True
