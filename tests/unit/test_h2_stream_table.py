# mypy: disable-error-code="comparison-overlap"
"""Unit tests for the stream table behind proxy.http2.session: frames on streams that are
over (reset by either side, dropped by the app's GOAWAY, refused by the proxy) are
recognised, never taken for a protocol violation, and the flow-control credit of what
the proxy drops is given back.  Frames are built with ``hyperframe``."""

from __future__ import annotations

from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)
from test_h2_state import S, both_acks, out, request, response, session

from proxy.http2.session import H2Session
from proxy.http2.streams import MAX_RESET_MEMORY

NO_ERROR, CANCEL = 0x0, 0x8
TRAILERS = b"\x40\x01x\x01y"  # "x: y" as a literal with indexing: it changes the HPACK table


def trailers(stream: int) -> bytes:
    return HeadersFrame(stream, data=TRAILERS, flags={"END_HEADERS", "END_STREAM"}).serialize()


def credit(frames: list[bytes]) -> int:
    """The connection-level flow-control credit in what was sent."""
    return sum(f.window_increment for f in out(frames)
               if isinstance(f, WindowUpdateFrame) and f.stream_id == 0)


def test_trailers_after_the_app_answered_and_reset_the_stream_reach_the_app() -> None:
    """RFC 9113 section 8.1: the app may answer, then reset with NO_ERROR to stop the
    upload; the client's trailers already on the wire are ignored, by the app."""
    s = session()
    s.from_client(request(1, end_stream=False) + request(3, end_stream=False), 0.0)
    s.from_app(response(1) + RstStreamFrame(1, error_code=NO_ERROR).serialize(), 0.0)
    out(s.to_app)
    s.from_client(trailers(1) + DataFrame(3, data=b"still uploading").serialize(), 0.0)
    assert s.state is S.OPEN and not s.failed
    assert [(type(f).__name__, f.stream_id) for f in out(s.to_app)] == [
        ("HeadersFrame", 1), ("DataFrame", 3)], "the block keeps the app's HPACK table in step"
    assert s.active == 1


def test_frames_on_streams_the_apps_goaway_dropped_are_relayed() -> None:
    s = session()
    s.from_client(request(1, end_stream=False) + request(3, end_stream=False), 0.0)
    s.from_app(GoAwayFrame(0, last_stream_id=1).serialize(), 0.0)
    out(s.to_app)
    s.from_client(DataFrame(3, data=b"body").serialize() + trailers(3), 0.0)
    assert s.state is S.OPEN
    assert [f.stream_id for f in out(s.to_app)] == [3, 3]


def test_trailers_after_the_client_reset_its_own_stream_are_not_a_connection_error() -> None:
    s = session()
    s.from_client(request(1, end_stream=False)
                  + RstStreamFrame(1, error_code=CANCEL).serialize() + trailers(1), 0.0)
    assert s.state is S.OPEN


def test_headers_on_a_stream_that_ended_normally_is_still_an_error() -> None:
    s = session()
    s.from_client(request(1), 0.0)
    s.from_app(response(1), 0.0)
    s.from_client(trailers(1), 0.0)
    assert s.state is S.CLOSED and s.failed


def test_the_memory_of_reset_streams_is_bounded() -> None:
    s = session()
    for index in range(MAX_RESET_MEMORY + 10):
        stream = 2 * index + 1
        s.from_client(request(stream, end_stream=False), float(index))
        s.from_app(RstStreamFrame(stream, error_code=NO_ERROR).serialize(), float(index))
    assert len(s.table._reset) == MAX_RESET_MEMORY
    s.from_client(trailers(2 * MAX_RESET_MEMORY + 19), 1e6)  # the latest: remembered
    assert s.state is S.OPEN
    s.from_client(trailers(1), 1e6)  # the oldest: forgotten, as hyper-h2 forgets
    assert s.state is S.CLOSED


def refused_stream_session() -> H2Session:
    s = session()
    s.from_client(request(1, end_stream=False), 0.0)
    s.goaway("drain")
    s.from_client(both_acks(), 0.0)
    assert s.state is S.FINAL
    s.from_client(request(3, end_stream=False), 0.0)
    out(s.to_app), out(s.to_client)
    return s


def test_data_on_a_refused_stream_is_dropped_and_its_credit_given_back() -> None:
    s = refused_stream_session()
    padded = DataFrame(3, data=b"x" * 1000, pad_length=24, flags={"PADDED"}).serialize()
    s.from_client(DataFrame(3, data=b"x" * 16_000).serialize() + padded
                  + DataFrame(1, data=b"y" * 10).serialize(), 0.0)
    assert [(type(f).__name__, f.stream_id) for f in out(s.to_app)] == [("DataFrame", 1)]
    assert credit(s.to_client) == 16_000 + 1 + 1000 + 24, "padding counts too"
    s.from_client(DataFrame(3, data=b"", flags={"END_STREAM"}).serialize(), 0.0)
    assert s.to_client == [], "no WINDOW_UPDATE of 0 (a PROTOCOL_ERROR)"
    assert s.state is S.FINAL


def test_other_frames_on_a_refused_stream_are_dropped_without_an_error() -> None:
    s = refused_stream_session()
    s.from_client(WindowUpdateFrame(3, window_increment=100).serialize()
                  + trailers(3) + RstStreamFrame(3, error_code=CANCEL).serialize(), 0.0)
    assert s.state is S.FINAL
    assert not [f for f in out(s.to_app) if isinstance(f, WindowUpdateFrame | RstStreamFrame)]
    s.from_client(ContinuationFrame(3, data=b"\x82", flags={"END_HEADERS"}).serialize(), 0.0)
    assert s.state is S.CLOSED and s.failed, "CONTINUATION out of place is still an error"

