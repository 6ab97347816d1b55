"""``streams.kv.live_entries``: a bucket's live keys, read from the stream's state, not a watcher's first pass."""

from __future__ import annotations

from nats.aio.client import Client
from nats.js.api import KeyValueConfig

from services.gateway.http.apikeys import ApiKeys
from streams.kv import APIKEYS_BUCKET, apply_kv, kv_buckets, live_entries
from tether.connection import connect
from tether.settings import Settings


async def test_live_entries_lists_values_and_leaves_out_deleted_and_purged_keys(nc: Client) -> None:
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket="live_test", history=3))
    assert await live_entries(js, "live_test") == {}
    for key, value in (("a", b"1"), ("b.c", b"2"), ("d", b"3"), ("e", b"4")):
        await kv.put(key, value)
    await kv.put("a", b"1 again")
    await kv.delete("d")
    await kv.purge("e")
    assert await live_entries(js, "live_test") == {"a": b"1 again", "b.c": b"2"}


async def test_a_key_just_added_is_seen_by_every_fresh_reader(settings: Settings, nc: Client) -> None:
    """Each round opens a new connection, as each ``tether apikeys`` command does, and must see the key."""
    js = nc.jetstream()
    await apply_kv(js, kv_buckets(settings, nc._server_info))
    keys = await ApiKeys.open(js)
    for round_ in range(25):
        _, record = await keys.add("acme", f"round {round_}")
        reader = await connect(settings.url, name="fresh-reader")
        try:
            fresh = await ApiKeys.open(reader.jetstream())
            assert record.digest in {k.digest for k in await fresh.list()}, round_
            assert await fresh.revoke(record.digest[:12]) == 1, round_
        finally:
            await reader.close()
    assert await keys.list() == []
    assert await live_entries(js, APIKEYS_BUCKET) == {}
