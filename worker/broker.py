"""The Redis transport, with one change: a channel does not restore unacknowledged messages when it closes.

kombu restores them when a channel goes away; after the connection to Redis is lost that path crashes the
whole worker (``AttributeError`` in ``Channel._connparams``: the connection it reads is already gone), so a
Redis restart would stop the workers. Nothing is lost without it: Redis hands an unacknowledged message out
again once its visibility timeout passes, and before that the beat sweeper re-enqueues whatever inbox rows
are still open.
"""

from __future__ import annotations

from kombu.transport import redis


class Channel(redis.Channel):
    do_restore = False


class Transport(redis.Transport):
    Channel = Channel
