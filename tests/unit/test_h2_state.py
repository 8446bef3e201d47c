# mypy: disable-error-code="comparison-overlap"
# (these tests assert a state, fire an event, then assert the next state)
"""Unit tests for proxy.http2.session: every transition of the GOAWAY sequence, the stream
lifetimes it depends on, and the hostile input it stops, with no sockets.  Frames are
built with ``hyperframe``, not with the proxy's own frame code."""

from __future__ import annotations

from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)
from hypothesis import given
from hypothesis import strategies as st

from proxy.http2.goaway import FIRST_PING, SECOND_PING
from proxy.http2.session import (
    FIRST_STREAM,
    MAX_FRAME_CAP,
    NEXT_STREAM,
    NOT_WAITING,
    RESET_BURST,
    TRANSITIONS,
    H2Session,
    H2State,
)
from proxy.transitions import IllegalTransition

S = H2State
MAX = 2**31 - 1
BLOCK = b"\x82\x86\x84"  # :method GET, :scheme http, :path / (static table only)


def session(budget: int = 0) -> H2Session:
    """Both prefaces exchanged: the client's SETTINGS to the app, the app's to the client,
    and the client's ACK of the app's."""
    s = H2Session(budget, max_header_block=65536, now=0.0)
    s.from_client(SettingsFrame(0).serialize(), 0.0)
    s.from_app(SettingsFrame(0).serialize(), 0.0)
    s.from_client(settings_ack(), 0.0)
    s.to_app.clear()
    s.to_client.clear()
    return s


def out(frames: list[bytes]) -> list[Frame]:
    data, parsed = b"".join(frames), []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        parsed.append(frame)
        data = data[9 + length:]
    frames.clear()
    return parsed


def request(stream: int, end_stream: bool = True) -> bytes:
    flags = {"END_HEADERS", "END_STREAM"} if end_stream else {"END_HEADERS"}
    return HeadersFrame(stream, data=BLOCK, flags=flags).serialize()


def response(stream: int) -> bytes:
    return (HeadersFrame(stream, data=b"\x88", flags={"END_HEADERS"}).serialize()
            + DataFrame(stream, data=b"ok", flags={"END_STREAM"}).serialize())


def ping_ack(opaque: bytes) -> bytes:
    return PingFrame(0, opaque_data=opaque, flags={"ACK"}).serialize()


def settings_ack() -> bytes:
    return SettingsFrame(0, flags={"ACK"}).serialize()


def both_acks() -> bytes:
    """What a client answers to the start of our GOAWAY sequence: the ACK of our SETTINGS
    (which clear its HPACK table), then of both PINGs."""
    return settings_ack() + ping_ack(FIRST_PING) + ping_ack(SECOND_PING)


def goaways(frames: list[Frame]) -> list[tuple[int, int]]:
    return [(f.last_stream_id, f.error_code) for f in frames if isinstance(f, GoAwayFrame)]


def test_the_table_names_every_state() -> None:
    assert set(TRANSITIONS) == set(S)


def test_open_announced_final_closed_the_sequence_grpc_servers_use() -> None:
    s = session()
    s.from_client(request(1, end_stream=False), 0.0)
    s.goaway("drain")
    assert s.state is S.ANNOUNCED
    sent = out(s.to_client)
    assert goaways(sent) == [(MAX, 0)] and isinstance(sent[2], PingFrame)
    assert isinstance(sent[1], SettingsFrame) and sent[1].settings == {0x1: 0}
    s.from_client(settings_ack() + ping_ack(FIRST_PING), 0.0)
    assert s.state is S.ANNOUNCED
    second = out(s.to_client)
    assert [(type(f).__name__, getattr(f, "opaque_data", None)) for f in second] == [
        ("PingFrame", SECOND_PING)]
    # Queued by the client before it read the GOAWAY, written after its first ACK (as
    # gRPC's C core does): still served, because the final GOAWAY waits for the second.
    s.from_client(request(3), 0.0)
    s.from_client(ping_ack(SECOND_PING), 0.0)
    assert s.state is S.FINAL
    assert goaways(out(s.to_client)) == [(3, 0)]
    assert [f.stream_id for f in out(s.to_app)] == [1, 3], "our PINGs' ACKs are not relayed"
    s.from_app(response(1) + response(3), 0.0)
    assert s.state is S.FINAL, "stream 1 still has its request body to send"
    s.from_client(DataFrame(1, data=b"body", flags={"END_STREAM"}).serialize(), 0.0)
    assert s.state is S.CLOSED and s.close_reason == "drain" and not s.failed
    assert [type(f).__name__ for f in out(s.to_app)] == ["DataFrame"], \
        "the frame that ends the last stream is relayed"


def test_the_ping_timer_sends_the_final_goaway_without_an_ack() -> None:
    s = session()
    s.from_client(request(1), 0.0)
    s.goaway("max_age")
    s.from_client(settings_ack(), 0.0)
    s.ping_timed_out()
    assert s.state is S.FINAL
    assert goaways(out(s.to_client)) == [(MAX, 0), (1, 0)]


def test_the_final_goaway_waits_until_the_client_has_cleared_its_hpack_table() -> None:
    """A busy client has read nothing when the PING timer runs out: a stream it opens
    then is encoded with its full table, so its block must reach the app; it is served
    (refusing it would be a lie), and the final GOAWAY follows the client's ACK."""
    s = session()
    s.from_client(request(1, end_stream=False), 0.0)
    s.goaway("drain")
    s.ping_timed_out()
    assert s.state is S.ANNOUNCED
    s.from_client(request(3), 0.0)
    assert [f.stream_id for f in out(s.to_app)] == [1, 3] and s.active == 2
    s.from_client(settings_ack(), 0.0)
    assert s.state is S.FINAL and goaways(out(s.to_client)) == [(MAX, 0), (3, 0)]
    assert out(s.to_app) == [], "our SETTINGS' ACK is not relayed: the app never sent them"


def test_with_every_stream_over_the_timer_needs_no_ack() -> None:
    s = session()
    s.from_client(request(1, end_stream=False), 0.0)
    s.goaway("drain")
    s.ping_timed_out()
    s.from_app(response(1) + RstStreamFrame(1, error_code=0).serialize(), 0.0)
    assert s.state is S.CLOSED and goaways(out(s.to_client)) == [(MAX, 0), (1, 0)]


def test_the_acks_of_the_apps_settings_are_relayed_and_its_table_size_kept_at_0() -> None:
    s = session()
    s.from_client(request(1, end_stream=False), 0.0)
    s.from_app(SettingsFrame(0, settings={0x3: 50}).serialize(), 0.0)  # ACK #2, in flight
    s.goaway("drain")  # ours: #3
    s.from_app(SettingsFrame(0, settings={0x1: 8192}).serialize(), 0.0)  # #4
    later = out(s.to_client)[-1]
    assert isinstance(later, SettingsFrame) and later.settings == {0x1: 0}
    out(s.to_app)
    s.from_client(settings_ack() * 3, 0.0)
    assert [type(f).__name__ for f in out(s.to_app)] == ["SettingsFrame", "SettingsFrame"]
    s.from_client(ping_ack(FIRST_PING) + ping_ack(SECOND_PING), 0.0)
    assert s.state is S.FINAL


def test_open_to_final_an_idle_connection_at_the_drain_closes_with_last_stream_zero() -> None:
    s = session()
    s.drain_idle()
    assert s.state is S.CLOSED and s.close_reason == "drain"
    assert goaways(out(s.to_client)) == [(0, 0)]


def test_a_goaway_before_the_first_stream_waits_for_it() -> None:
    s = session()
    s.goaway("drain")
    assert s.state is S.OPEN and s.to_client == []
    s.from_client(request(1), 0.0)
    assert s.state is S.ANNOUNCED
    assert [type(f).__name__ for f in out(s.to_app)] == ["HeadersFrame"]


def test_the_request_budget_starts_the_sequence_on_its_last_stream() -> None:
    s = session(budget=2)
    s.from_client(request(1), 0.0)
    assert s.state is S.OPEN
    s.from_client(request(3), 0.0)
    assert s.state is S.ANNOUNCED and s.goaways == ["max_requests"]


def test_open_to_closed_and_announced_to_closed_on_a_protocol_error() -> None:
    for announce in (False, True):
        s = session()
        s.from_client(request(1, end_stream=False), 0.0)
        if announce:
            s.goaway("drain")
            out(s.to_client)
        s.from_client(ContinuationFrame(1, data=b"x").serialize(), 0.0)
        assert s.state is S.CLOSED and s.failed and s.close_reason == "protocol_error"
        assert goaways(out(s.to_client)) == [(1, 1)]


def test_streams_opened_after_the_final_goaway_are_refused_and_never_reach_the_app() -> None:
    s = session()
    s.from_client(request(1, end_stream=False), 0.0)
    s.goaway("drain")
    s.from_client(both_acks(), 0.0)
    out(s.to_client), out(s.to_app)
    s.from_client(request(3), 0.0)
    assert out(s.to_app) == [], "REFUSED_STREAM: not processed, safe to retry"
    resets = [f for f in out(s.to_client) if isinstance(f, RstStreamFrame)]
    assert [(f.stream_id, f.error_code) for f in resets] == [(3, 7)]
    assert s.active == 1


def test_a_rapid_reset_flood_ends_after_its_burst() -> None:
    s = session()
    flood = b"".join(request(2 * i + 1, end_stream=False)
                     + RstStreamFrame(2 * i + 1, error_code=8).serialize()
                     for i in range(RESET_BURST + 50))
    s.from_client(flood, 0.0)
    assert s.state is S.CLOSED and s.close_reason == "abuse"
    assert goaways(out(s.to_client))[0][1] == 0xB
    forwarded = [f for f in out(s.to_app) if isinstance(f, HeadersFrame)]
    assert len(forwarded) == RESET_BURST + 1


def test_a_reset_ending_the_last_stream_past_the_flood_limit_ends_the_connection_once() -> None:
    """The client's RST_STREAM both ends the last stream of a FINAL connection (which
    closes it) and is one reset too many (which fails it): one of the two, no error."""
    s = session()
    s.from_client(request(1, end_stream=False), 0.0)
    s.goaway("drain")
    s.from_client(both_acks(), 0.0)
    s.from_client(b"".join(request(2 * i + 3) for i in range(RESET_BURST)), 0.0)
    assert s.state is S.FINAL, "refused streams count as resets: the bucket is empty"
    out(s.to_client)
    s.from_client(RstStreamFrame(1, error_code=8).serialize(), 0.0)
    assert s.state is S.CLOSED and s.close_reason == "abuse"
    assert goaways(out(s.to_client)) == [(1, 0xB)]


def test_resets_at_a_modest_rate_are_fine() -> None:
    s = session()
    for i in range(RESET_BURST * 3):
        s.from_client(request(2 * i + 1, end_stream=False)
                      + RstStreamFrame(2 * i + 1, error_code=8).serialize(), i * 0.02)
    assert s.state is S.OPEN


def test_a_header_block_is_held_until_it_is_complete_and_bounded() -> None:
    s = session()
    s.from_client(HeadersFrame(1, data=BLOCK).serialize(), 0.0)
    assert s.to_app == [], "held until END_HEADERS"
    s.from_client(ContinuationFrame(1, data=b"\x82", flags={"END_HEADERS"}).serialize(), 0.0)
    assert [type(f).__name__ for f in out(s.to_app)] == ["HeadersFrame", "ContinuationFrame"]
    small = H2Session(0, max_header_block=100, now=0.0)
    small.from_client(SettingsFrame(0).serialize() + HeadersFrame(1, data=BLOCK).serialize()
                      + ContinuationFrame(1, data=b"\x82" * 200).serialize(), 0.0)
    assert small.state is S.CLOSED and small.close_reason == "abuse"
    assert [type(f).__name__ for f in out(small.to_app)] == ["SettingsFrame"]


def test_the_app_sending_goaway_lowers_ours() -> None:
    s = session()
    s.from_client(request(1, end_stream=False) + request(3, end_stream=False), 0.0)
    s.from_app(GoAwayFrame(0, last_stream_id=1).serialize(), 0.0)
    assert s.active == 1, "stream 3 will not be answered: not waited for"
    s.goaway("drain")
    assert goaways(out(s.to_client)) == [(1, 0), (1, 0)], "never above the app's last id"


def test_an_app_header_block_interrupted_is_an_app_failure() -> None:
    s = session()
    s.from_client(request(1), 0.0)
    s.from_app(HeadersFrame(1, data=b"\x88").serialize() + DataFrame(1).serialize(), 0.0)
    assert s.state is S.CLOSED and s.close_reason == "app_error"


def test_an_app_header_block_over_its_limit_ends_the_connection() -> None:
    s = session()
    s.from_client(request(1), 0.0)
    s.from_app(HeadersFrame(1, data=b"\x88").serialize(), 0.0)
    for _ in range(4):  # an endless CONTINUATION sequence: 64 KiB and more
        s.from_app(ContinuationFrame(1, data=b"\x00" * 16384).serialize(), 0.0)
    assert s.state is S.CLOSED and s.close_reason == "app_too_large"
    assert s.reset_client, "the client's stream is cut, not ended"
    assert not any(isinstance(f, HeadersFrame | ContinuationFrame) for f in out(s.to_client))


def test_our_frames_wait_for_the_apps_settings_the_servers_first_frame() -> None:
    s = H2Session(0, max_header_block=65536, now=0.0)
    s.from_client(SettingsFrame(0).serialize() + request(1), 0.0)
    s.goaway("drain")
    assert s.state is S.ANNOUNCED and s.to_client == []
    s.from_app(SettingsFrame(0).serialize() + response(1), 0.0)
    assert [type(f).__name__ for f in out(s.to_client)] == [
        "SettingsFrame", "GoAwayFrame", "SettingsFrame", "PingFrame", "HeadersFrame",
        "DataFrame"]
    out(s.to_app)
    s.from_client(settings_ack() * 2 + ping_ack(FIRST_PING) + ping_ack(SECOND_PING), 0.0)
    assert s.state is S.CLOSED
    assert len(out(s.to_app)) == 1, "the second ACK was ours, the first the app's"


def test_an_unreachable_app_gets_each_stream_a_502_then_goaway() -> None:
    s = H2Session(0, max_header_block=65536, now=0.0)
    s.from_client(SettingsFrame(0).serialize() + request(1), 0.0)
    s.app_unreachable()
    sent = out(s.to_client)
    assert [type(f).__name__ for f in sent] == ["SettingsFrame", "SettingsFrame", "HeadersFrame"]
    assert "ACK" in sent[1].flags
    assert isinstance(sent[2], HeadersFrame) and sent[2].data == b"\x08\x03502"
    assert {"END_STREAM", "END_HEADERS"} <= set(sent[2].flags)
    s.from_client(request(3) + PingFrame(0, opaque_data=b"12345678").serialize(), 0.0)
    later = out(s.to_client)
    assert [(type(f).__name__, f.stream_id) for f in later] == [
        ("HeadersFrame", 3), ("PingFrame", 0)]
    assert "ACK" in later[1].flags
    s.unreachable_over()
    assert s.state is S.CLOSED and goaways(out(s.to_client)) == [(3, 0)]


def test_frames_larger_than_64_kib_are_never_allowed_through_the_proxy() -> None:
    """A peer allowing 16 MiB frames would have the proxy hold 16 MiB per connection
    (a frame is relayed once complete): both sides are told 64 KiB at most."""
    s = H2Session(0, max_header_block=65536, now=0.0)
    huge = {0x5: 2**24 - 1, 0x4: 1 << 20}  # MAX_FRAME_SIZE, and INITIAL_WINDOW_SIZE untouched
    s.from_client(SettingsFrame(0, settings=huge).serialize(), 0.0)
    s.from_app(SettingsFrame(0, settings=huge).serialize(), 0.0)
    for sent in (out(s.to_app)[0], out(s.to_client)[0]):
        assert isinstance(sent, SettingsFrame)
        assert sent.settings == {0x5: MAX_FRAME_CAP, 0x4: 1 << 20}
    s.from_client(request(1, end_stream=False)
                  + DataFrame(1, data=b"x" * MAX_FRAME_CAP).serialize(), 0.0)
    assert s.state is S.OPEN
    s.from_client(DataFrame(1, data=b"x" * (MAX_FRAME_CAP + 1)).serialize(), 0.0)
    assert s.state is S.CLOSED and goaways(out(s.to_client))[-1][1] == 0x6  # FRAME_SIZE_ERROR


def test_waiting_for_the_first_stream_then_between_streams_each_ends_with_goaway() -> None:
    s = session()
    assert s.waiting == FIRST_STREAM
    s.timed_out()
    assert s.state is S.CLOSED and s.close_reason == "idle_timeout" and not s.failed
    assert goaways(out(s.to_client)) == [(0, 0)]
    s = session()
    s.from_client(request(1), 0.0)
    assert s.waiting == NOT_WAITING
    s.timed_out()  # a timer that fired as the stream began: nothing to do
    assert s.state is S.OPEN
    s.from_app(response(1), 0.0)
    assert s.waiting == NEXT_STREAM
    s.timed_out()
    assert s.state is S.CLOSED and goaways(out(s.to_client)) == [(1, 0)]


def test_a_timeout_before_the_apps_settings_still_sends_valid_http2() -> None:
    s = H2Session(0, max_header_block=65536, now=0.0)
    s.from_client(SettingsFrame(0).serialize(), 0.0)
    s.timed_out()
    assert [type(f).__name__ for f in out(s.to_client)] == ["SettingsFrame", "GoAwayFrame"]


def test_leaving_closed_is_illegal() -> None:
    s = session()
    s.drain_idle()
    try:
        s._move(S.OPEN)
    except IllegalTransition:
        return
    raise AssertionError("CLOSED is final")


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_any_split_of_the_bytes_relays_the_same_frames(cuts: list[int]) -> None:
    stream = (SettingsFrame(0).serialize() + request(1, end_stream=False)
              + HeadersFrame(3, data=BLOCK).serialize()
              + ContinuationFrame(3, data=b"\x82", flags={"END_HEADERS"}).serialize()
              + DataFrame(1, data=b"x" * 100, flags={"END_STREAM"}).serialize()
              + PingFrame(0, opaque_data=b"12345678").serialize())
    whole = H2Session(0, 65536, 0.0)
    whole.from_client(stream, 0.0)
    pieces = H2Session(0, 65536, 0.0)
    position = 0
    for cut in cuts:
        pieces.from_client(stream[position:position + cut], 0.0)
        position += cut
    pieces.from_client(stream[position:], 0.0)
    assert b"".join(pieces.to_app) == b"".join(whole.to_app) == stream
    assert pieces.table.open == whole.table.open == {1: 1, 3: 0}  # 1: its request is complete


def test_the_final_goaway_resetting_the_last_open_stream_closes_the_connection_once() -> None:
    """The app's GOAWAY named stream 1; the client opened stream 3 before reading it.  At
    the final GOAWAY stream 3 is reset, which ends the last stream: the connection closes
    (once: a second close raised IllegalTransition out of the relay)."""
    s = session()
    s.from_client(request(1, end_stream=False), 0.0)
    s.from_app(GoAwayFrame(0, last_stream_id=1).serialize(), 0.0)
    s.from_client(request(3, end_stream=False), 0.0)
    s.goaway("drain")
    s.from_app(response(1), 0.0)
    s.from_client(DataFrame(1, data=b"body", flags={"END_STREAM"}).serialize(), 0.0)
    s.from_client(both_acks(), 0.0)
    assert s.state is S.CLOSED and s.close_reason == "drain" and not s.failed
    assert (1, 0) in goaways(out(s.to_client))
