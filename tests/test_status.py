"""One status snapshot per period, built once and shared by every listener."""
import asyncio
import json

from engine.net.broadcast import Broadcaster
from engine.net.status import StatusPublisher
from engine.rt.ring import PcmRing


class CountingStation:
    def __init__(self):
        self.builds = 0

    def status(self) -> dict:
        self.builds += 1
        return {"strides": self.builds}


def test_every_listener_gets_the_same_message_and_it_is_built_once_per_period():
    station = CountingStation()
    broadcaster = Broadcaster(PcmRing(32000, 1), 32000, 1)

    async def scenario():
        publisher = StatusPublisher(station, broadcaster, period_seconds=0.05)
        publishing = asyncio.ensure_future(publisher.run())

        async def ticker():
            return [await publisher.next_message() for _ in range(3)]

        received = await asyncio.gather(*[ticker() for _ in range(500)])
        publishing.cancel()
        return publisher, received

    publisher, received = asyncio.run(scenario())
    assert all(messages == received[0] for messages in received)
    assert all(a is b for messages in received for a, b in zip(messages, received[0]))  # one string
    assert [json.loads(m)["strides"] for m in received[0]] == [1, 2, 3]
    assert station.builds == publisher.builds == 3  # not 3 × 500


def test_status_counts_listeners_per_kind_without_visiting_them():
    station = CountingStation()
    broadcaster = Broadcaster(PcmRing(32000, 1), 32000, 1)

    async def scenario():
        publisher = StatusPublisher(station, broadcaster)
        a = broadcaster.join("ws-opus", "opus")
        broadcaster.join("ws-opus", "opus")
        broadcaster.join("http-mp3", "mp3")
        first = publisher.snapshot()
        broadcaster.leave(a)
        broadcaster.leave(a)  # twice: counted once
        return first, publisher.snapshot()

    first, later = asyncio.run(scenario())
    assert first["listeners"] == {"ws-opus": 2, "http-mp3": 1} and first["listeners_total"] == 3
    assert later["listeners"] == {"ws-opus": 1, "http-mp3": 1} and later["listeners_total"] == 2
    assert station.builds == 2


def test_health_is_200_while_playing_and_503_when_generation_failed():
    from engine.net.status import health
    assert health({"first_sound_seconds": None, "failing_seconds": 0.0}, 300) == (
        200, {"ok": True, "state": "starting", "failing_seconds": 0.0})
    assert health({"first_sound_seconds": 1.2, "failing_seconds": 4.0}, 300)[0] == 200  # retrying
    assert health({"first_sound_seconds": 1.2, "failing_seconds": 300.0}, 300)[0] == 503
    code, body = health({"first_sound_seconds": 1.2, "failing_seconds": 0.0, "failed": True}, 300)
    assert code == 503 and body["state"] == "failed"
