"""HTTP/2 through the HTTP port, frame by frame: the relay is transparent, the GOAWAY
sequence is the one gRPC servers use, and hostile frames stop at the proxy.

The client and app are ``h2`` (python-hyper) peers (``h2_peers``); hostile frames are
built with ``hyperframe``, independently of the proxy's own frame code.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil

import pytest
from h2_peers import H2Client, goaways, h2_app, slow_stream_across_the_drain
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from proxy.http2.relay import H2Connection

from conftest import Run
from helpers import eventually, running_proxy, sample, scripted_app

MAX_STREAM_ID = 2**31 - 1
ENHANCE_YOUR_CALM, FRAME_SIZE_ERROR, PROTOCOL_ERROR, REFUSED_STREAM = 0xB, 0x6, 0x1, 0x7



def test_the_app_receives_exactly_the_bytes_the_client_sent(run: Run[None]) -> None:
    async def scenario() -> None:
        async with h2_app() as app, running_proxy(f"127.0.0.1:{app.port}") as proxy:
            client = await H2Client.open(proxy.port)
            streams = [client.request(f"/{i}") for i in range(3)]
            await client.read_until(lambda c: sorted(c.responses()) == streams)
            client.close()
            await eventually(lambda: bool(app.received) and app.received[0] == client.sent)
            assert [dict(r)[b":path"] for r in app.requests] == [b"/0", b"/1", b"/2"]

    run(scenario())


def test_a_preface_split_over_many_reads_is_still_http2(run: Run[None]) -> None:
    async def scenario() -> None:
        async with h2_app() as app, running_proxy(f"127.0.0.1:{app.port}") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            client = H2Client(reader, writer)
            client.conn.initiate_connection()
            data = client.conn.data_to_send()
            for index in range(0, 30):  # the 24-byte preface and a bit, one byte a write
                client.send_raw(data[index:index + 1])
                await writer.drain()
                await asyncio.sleep(0.001)
            client.send_raw(data[30:])
            stream = client.request("/split")
            await client.read_until(lambda c: stream in c.responses())
            client.close()

    run(scenario())


def test_a_rapid_reset_flood_ends_with_enhance_your_calm_before_it_reaches_the_app(
        run: Run[None]) -> None:
    async def scenario() -> None:
        async with h2_app() as app, running_proxy(f"127.0.0.1:{app.port}") as proxy:
            client = await H2Client.open(proxy.port)
            flood = bytearray()
            for index in range(2000):
                stream = 2 * index + 1
                flood += client.raw_headers(stream, end_stream=False)
                flood += RstStreamFrame(stream, error_code=0x8).serialize()
            with contextlib.suppress(ConnectionError):
                client.send_raw(bytes(flood))
            with contextlib.suppress(ConnectionError):
                await client.read_to_eof()
            assert goaways(client)[-1][1] == ENHANCE_YOUR_CALM, goaways(client)
            assert len(app.requests) <= 210, "the flood was stopped after its burst"
            assert sample(proxy, "drain_proxy_h2_goaways_total", {"reason": "abuse"}) == 1

    run(scenario())


def test_an_endless_continuation_sequence_never_reaches_the_app(run: Run[None]) -> None:
    async def scenario() -> None:
        async with h2_app() as app, running_proxy(f"127.0.0.1:{app.port}") as proxy:
            client = await H2Client.open(proxy.port)
            start = HeadersFrame(1, data=client.conn.encoder.encode([(":method", "GET")]))
            flood = bytearray(start.serialize())
            for _ in range(100):
                flood += ContinuationFrame(1, data=b"\x40\x03abc\x03xyz" * 1000).serialize()
            with contextlib.suppress(ConnectionError):
                client.send_raw(bytes(flood))
            with contextlib.suppress(ConnectionError):
                await client.read_to_eof()
            assert goaways(client)[-1][1] == ENHANCE_YOUR_CALM, goaways(client)
            assert app.requests == []
            assert not app.received or len(app.received[0]) < 200, \
                "no byte of the header block reached the app"

    run(scenario())


async def _answers_with_an_endless_header_block(reader: asyncio.StreamReader,
                                               writer: asyncio.StreamWriter) -> None:
    """An HTTP/2 app whose answer is a HEADERS frame and 1 MiB of CONTINUATION frames."""
    await reader.readexactly(24)  # the client's preface, relayed
    writer.write(SettingsFrame(0).serialize())
    while True:  # up to the request's HEADERS frame
        header = await reader.readexactly(9)
        await reader.readexactly(int.from_bytes(header[:3], "big"))
        if header[3] == 0x1:
            break
    stream = int.from_bytes(header[5:9], "big") & MAX_STREAM_ID
    writer.write(HeadersFrame(stream, data=b"\x88").serialize())
    for _ in range(64):
        writer.write(ContinuationFrame(stream, data=b"\x00" * 16384).serialize())
        await writer.drain()
    await reader.read()


def test_an_endless_header_block_from_the_app_is_cut_and_counted(run: Run[None]) -> None:
    async def scenario() -> None:
        async with scripted_app(_answers_with_an_endless_header_block) as port, \
                running_proxy(f"127.0.0.1:{port}") as proxy:
            client = await H2Client.open(proxy.port)
            stream = client.request()
            with contextlib.suppress(ConnectionError):
                await client.read_to_eof(timeout_s=1)
            assert stream not in client.responses()
            assert not client.of_type("HeadersFrame") and not client.of_type("ContinuationFrame")
            assert sample(proxy, "drain_proxy_upstream_errors_total",
                          {"reason": "too_large"}) == 1

    run(scenario())


def test_malformed_frames_get_goaway_with_the_right_error(run: Run[None]) -> None:
    async def one(port: int, frame: bytes, error: int) -> None:
        client = await H2Client.open(port)
        with contextlib.suppress(ConnectionError):
            client.send_raw(frame)
            await client.read_to_eof()
        assert goaways(client) and goaways(client)[-1][1] == error, (frame[:9], goaways(client))

    async def scenario() -> None:
        async with h2_app() as app, running_proxy(f"127.0.0.1:{app.port}") as proxy:
            await one(proxy.port, DataFrame(1, data=b"x" * 16_385).serialize(), FRAME_SIZE_ERROR)
            await one(proxy.port, PingFrame(0, opaque_data=b"12345678").serialize()[:3]
                      + b"\x06\x00\x00\x00\x00\x01" + b"1234567", PROTOCOL_ERROR)
            await one(proxy.port, ContinuationFrame(1, data=b"x").serialize(), PROTOCOL_ERROR)
            await one(proxy.port, DataFrame(2, data=b"x").serialize()[:5] + b"\x00\x00\x00\x00",
                      PROTOCOL_ERROR)  # DATA on stream 0
            assert app.requests == []
            assert sample(proxy, "drain_proxy_h2_goaways_total",
                          {"reason": "protocol_error"}) == 4

    run(scenario())


def test_the_drain_sends_goaway_then_pings_then_the_real_last_stream(run: Run[None]) -> None:
    async def scenario() -> None:
        async with h2_app(delay_s=0.5) as app, running_proxy(
                f"127.0.0.1:{app.port}", "--propagation-window", "5") as proxy:
            client = await H2Client.open(proxy.port)
            first = await slow_stream_across_the_drain(
                client, app, lambda: proxy.coordinator.trigger("test"))
            assert goaways(client) == [(MAX_STREAM_ID, 0), (first, 0)]
            pings = [f for f in client.of_type("PingFrame") if "ACK" not in f.flags]
            assert len(pings) == 2, "two PING rounds between the two GOAWAYs"
            # A stream opened after the final GOAWAY is refused; the app is told to cancel.
            client.send_raw(client.raw_headers(first + 2))
            await client.read_until(lambda c: bool(c.of_type("RstStreamFrame")))
            reset = client.of_type("RstStreamFrame")[0]
            assert isinstance(reset, RstStreamFrame)
            assert (reset.stream_id, reset.error_code) == (first + 2, REFUSED_STREAM)
            await client.read_to_eof()  # the first stream completes, then the proxy closes
            assert first in client.responses()
            assert proxy.ctx.timeline.cut_requests == 0

    run(scenario())


def test_a_client_that_never_answers_the_ping_still_gets_the_final_goaway(
        run: Run[None]) -> None:
    async def scenario() -> None:
        async with h2_app(delay_s=1.5) as app, running_proxy(
                f"127.0.0.1:{app.port}", "--propagation-window", "5") as proxy:
            client = await H2Client.open(proxy.port)
            await client.read_until(lambda c: bool(c.of_type("SettingsFrame")))
            client.answer_pings = False
            first = await slow_stream_across_the_drain(
                client, app, lambda: proxy.coordinator.trigger("test"))
            assert goaways(client) == [(MAX_STREAM_ID, 0), (first, 0)]
            await client.read_to_eof()
            assert first in client.responses()

    run(scenario())


def test_a_connection_opened_in_the_window_runs_its_first_stream_before_its_goaway(
        run: Run[None]) -> None:
    async def scenario() -> None:
        async with h2_app() as app, running_proxy(
                f"127.0.0.1:{app.port}", "--propagation-window", "5") as proxy:
            proxy.coordinator.trigger("test")
            client = await H2Client.open(proxy.port)
            await client.read_until(lambda c: bool(c.of_type("SettingsFrame")))
            assert goaways(client) == [], "no GOAWAY before the first stream"
            first = client.request("/in-window")
            await client.read_until(lambda c: first in c.responses() and len(goaways(c)) == 2)
            assert goaways(client) == [(MAX_STREAM_ID, 0), (first, 0)]
            await client.read_to_eof()

    run(scenario())


def test_an_idle_connection_without_streams_is_closed_when_the_listener_closes(
        run: Run[None]) -> None:
    async def scenario() -> None:
        async with h2_app() as app, running_proxy(
                f"127.0.0.1:{app.port}", "--propagation-window", "0.2") as proxy:
            client = await H2Client.open(proxy.port)
            await client.read_until(lambda c: bool(c.of_type("SettingsFrame")))
            proxy.coordinator.trigger("test")
            await client.read_to_eof()
            assert goaways(client) == [(0, 0)]
            await asyncio.wait_for(proxy.coordinator.wait_drained(), 5)

    run(scenario())


def test_max_connection_age_rotates_with_the_same_sequence(run: Run[None]) -> None:
    async def scenario() -> None:
        async with h2_app() as app, running_proxy(
                f"127.0.0.1:{app.port}", "--max-connection-age", "0.3",
                "--rotation-jitter", "0") as proxy:
            client = await H2Client.open(proxy.port)
            first = client.request("/")
            await client.read_until(lambda c: first in c.responses())
            await client.read_to_eof()
            assert goaways(client) == [(MAX_STREAM_ID, 0), (first, 0)]
            assert sample(proxy, "drain_proxy_h2_goaways_total", {"reason": "max_age"}) == 1

    run(scenario())


def test_streams_still_open_at_the_drain_deadline_are_counted_as_cut(run: Run[None]) -> None:
    async def scenario() -> None:
        async with h2_app(delay_s=5) as app, running_proxy(
                f"127.0.0.1:{app.port}", "--propagation-window", "0",
                "--drain-timeout", "0.3") as proxy:
            client = await H2Client.open(proxy.port)
            client.request("/never-answered-in-time")
            await eventually(lambda: len(app.requests) == 1)
            proxy.coordinator.trigger("test")
            await asyncio.wait_for(proxy.coordinator.wait_drained(), 5)
            assert proxy.ctx.timeline.cut_requests == 1
            assert sample(proxy, "drain_proxy_h2_streams_cut_total") == 1
            with contextlib.suppress(ConnectionError):
                await client.read_to_eof()

    run(scenario())


@pytest.mark.skipif(shutil.which("h2load") is None,
                    reason="h2load is missing (apt-get install nghttp2-client)")
def test_h2load_many_streams_per_connection_all_succeed(run: Run[None]) -> None:
    async def scenario() -> None:
        async with h2_app() as app, running_proxy(
                f"127.0.0.1:{app.port}", "--max-requests-per-connection", "0") as proxy:
            h2load = await asyncio.create_subprocess_exec(
                "h2load", "-n", "2000", "-c", "4", "-m", "16",
                f"http://127.0.0.1:{proxy.port}/", stdout=asyncio.subprocess.PIPE)
            output, _ = await asyncio.wait_for(h2load.communicate(), 60)
            report = output.decode()
            assert "2000 total, 2000 started, 2000 done, 2000 succeeded" in report, report
            assert "status codes: 2000 2xx" in report, report
            assert sample(proxy, "drain_proxy_h2_streams_total") == 2000
            assert sample(proxy, "drain_proxy_h2_connections_total") == 4

    run(scenario())


def test_a_client_that_stops_reading_a_large_answer_costs_the_proxy_bounded_memory(
        run: Run[None]) -> None:
    """The client opens its windows wide and allows 16 MiB frames, asks for 10 MiB and
    reads none of it: the proxy stops reading the app once the client's socket is full,
    and holds at most one (capped) frame besides what the socket took."""
    async def scenario() -> None:
        async with h2_app() as app, running_proxy(f"127.0.0.1:{app.port}") as proxy:
            client = await H2Client.open(proxy.port)
            wide = SettingsFrame(0, settings={0x4: 2**31 - 1, 0x5: 2**24 - 1}).serialize()
            client.send_raw(wide + WindowUpdateFrame(0, window_increment=2**31 - 1 - 65535
                                                     ).serialize()
                            + client.raw_headers(1, path="/big"))
            await eventually(lambda: len(app.requests) == 1)
            relay = next(iter(proxy.ctx.h2_connections))
            assert isinstance(relay, H2Connection)
            await eventually(lambda: not relay._app.reading)  # the client's socket is full
            client_side = relay._client.transport
            assert client_side is not None
            held = client_side.get_write_buffer_size() + len(relay.session._app.buffer)
            assert held <= 2 * 65_545, f"{held} bytes held for a client that reads nothing"
            client.close()

    run(scenario())
