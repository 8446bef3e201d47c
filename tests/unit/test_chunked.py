"""The chunked body decoder: where a chunked request body ends, and what it holds.

The proxy re-frames a chunked body, so the app sees its end where the decoder found it:
the decoder must find it where llhttp and h11 do, whatever the read boundaries, and
refuse (400) every chunk line llhttp refuses, so no body can end in two places.
"""

from __future__ import annotations

import itertools

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http1.chunked import (
    DATA,
    DATA_END,
    DONE,
    MAX_CHUNK_LINE_BYTES,
    SIZE,
    TRAILERS,
    ChunkedBody,
)
from proxy.http1.http_policy import Headers, HttpError

from helpers import mutated, parse_with_h11, parse_with_llhttp

HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
EXTENSIONS = [b"", b";a", b";a=b", b';a="q\\"s"', b";a=b;c=d", b';a="x y";b', b";A-1=~"]
TRAILER_NAMES = [b"X-T", b"checksum", b"Expires", b"x_u"]
TRAILER_VALUES = [b"1", b"a b", b"", b"\xff", b"q=\"1\""]
LIMIT_BYTES, LIMIT_COUNT = 8192, 100  # ample: the limits have their own tests
AFTER = b"GET / HTTP/1.1\r\n"  # the next request, pipelined: not part of the body


@st.composite
def chunked_bodies(draw: st.DrawFn) -> tuple[bytes, bytes, Headers]:
    """A chunked body as sent, its data, and its trailer fields."""
    wire: list[bytes] = []
    data: list[bytes] = []
    for _ in range(draw(st.integers(0, 5))):
        chunk = draw(st.binary(min_size=1, max_size=300))
        size = draw(st.sampled_from([b"%x", b"%X", b"0%x"])) % len(chunk)
        wire.append(size + draw(st.sampled_from(EXTENSIONS)) + b"\r\n" + chunk + b"\r\n")
        data.append(chunk)
    wire.append(b"0" * draw(st.integers(1, 3)) + draw(st.sampled_from(EXTENSIONS)) + b"\r\n")
    trailers = [(draw(st.sampled_from(TRAILER_NAMES)), draw(st.sampled_from(TRAILER_VALUES)))
                for _ in range(draw(st.integers(0, 3)))]
    wire += [name + b": " + value + b"\r\n" for name, value in trailers]
    wire.append(b"\r\n")
    return b"".join(wire), b"".join(data), trailers


def decode(body: bytes, cuts: list[int], limit_bytes: int = LIMIT_BYTES,
           limit_count: int = LIMIT_COUNT) -> tuple[bytes, Headers, int | None]:
    """Feed ``body`` to a decoder in reads split at ``cuts``: the data, the trailers, and
    where the body ended in ``body`` (None: not ended).  Raises HttpError."""
    decoder = ChunkedBody(limit_bytes, limit_count)
    out: list[bytes] = []
    bounds = [0, *sorted(set(cuts)), len(body)]
    for start, end in itertools.pairwise(bounds):
        ended = decoder.feed(body[start:end], 0, out)
        assert ended <= end - start
        if decoder.part is DONE:
            return b"".join(out), decoder.trailers, start + ended
        assert ended == end - start, "a body that goes on takes the whole read"
    return b"".join(out), decoder.trailers, None


@settings(max_examples=300, deadline=None)
@given(chunked_bodies(), st.data())
def test_drawn_bodies_are_read_as_llhttp_and_h11_read_them(
        body: tuple[bytes, bytes, Headers], data: st.DataObject) -> None:
    wire, sent, trailers = body
    cuts = data.draw(st.lists(st.integers(0, len(wire) + len(AFTER)), max_size=8))
    assert decode(wire + AFTER, cuts) == (sent, trailers, len(wire))
    [by_llhttp] = parse_with_llhttp(HEAD + wire)
    [by_h11] = parse_with_h11(HEAD + wire)
    lowered = [(name.lower(), value) for name, value in trailers]
    assert (by_llhttp.body, by_llhttp.trailers) == (sent, lowered)
    assert (by_h11.body, by_h11.trailers) == (sent, lowered)


MEANINGFUL = b"\r\n :;,\t\"\\=\x00\x7f\x80-+0123456789aAfFxXgG_"


@settings(max_examples=300, deadline=None)
@given(chunked_bodies(), st.data())
def test_mutated_bodies_the_decoder_accepts_are_read_alike(
        body: tuple[bytes, bytes, Headers], data: st.DataObject) -> None:
    """A body the decoder accepts ends where llhttp and h11 end it, with the same data
    and trailers (llhttp keeps a trailer value's trailing whitespace: it is not forwarded)."""
    wire = mutated(data, body[0], MEANINGFUL, lines=False)
    try:
        sent, trailers, ended = decode(wire + AFTER, [])
    except HttpError:
        return
    if ended is None:  # a mutation made a size larger: still waiting for data
        return
    [by_llhttp] = parse_with_llhttp(HEAD + wire[:ended])
    [by_h11] = parse_with_h11(HEAD + wire[:ended])
    lowered = [(name.lower(), value) for name, value in trailers]
    llhttp_trailers = [(name, value.rstrip(b" \t")) for name, value in by_llhttp.trailers]
    assert (by_llhttp.body, llhttp_trailers) == (sent, lowered)
    assert (by_h11.body, by_h11.trailers) == (sent, lowered)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=6))
    assert decode(wire + AFTER, cuts) == (sent, trailers, ended)


@settings(max_examples=200, deadline=None)
@given(chunked_bodies())
def test_a_body_ends_where_it_ends_at_every_cut(body: tuple[bytes, bytes, Headers]) -> None:
    """Every single read boundary, and in particular a CRLF cut between two reads."""
    wire, sent, trailers = body
    for cut in range(len(wire) + 1):
        assert decode(wire + AFTER, [cut]) == (sent, trailers, len(wire)), cut


def test_a_crlf_cut_between_two_reads() -> None:
    decoder = ChunkedBody(LIMIT_BYTES, LIMIT_COUNT)
    out: list[bytes] = []
    parts = []
    for read in (b"3;a=b\r", b"\nab", b"c\r", b"\n0\r", b"\nX: y\r", b"\n\r", b"\nGET"):
        ended = decoder.feed(read, 0, out)
        parts.append(decoder.part)
    assert parts == [SIZE, DATA, DATA_END, SIZE, TRAILERS, TRAILERS, DONE]
    assert (b"".join(out), decoder.trailers, ended) == (b"abc", [(b"X", b"y")], 1)


def test_a_read_may_start_past_where_the_head_ended() -> None:
    decoder = ChunkedBody(LIMIT_BYTES, LIMIT_COUNT)
    out: list[bytes] = []
    read = HEAD + b"2\r\nhi\r\n0\r\n\r\nNEXT"
    assert decoder.feed(read, len(HEAD), out) == read.index(b"NEXT")
    assert out == [b"hi"] and decoder.part is DONE


INVALID = {
    "space-after-size": b"1 \r\na\r\n0\r\n\r\n",
    "space-before-extension": b"1 ;a\r\na\r\n0\r\n\r\n",
    "empty-extension": b"1;\r\na\r\n0\r\n\r\n",
    "space-in-extension": b"1; a\r\na\r\n0\r\n\r\n",
    "space-before-equals": b"1;a =b\r\na\r\n0\r\n\r\n",
    "space-after-equals": b"1;a= b\r\na\r\n0\r\n\r\n",
    "unterminated-quote": b'1;a="b\r\na\r\n0\r\n\r\n',
    "control-in-quote": b'1;a="\\\x01"\r\na\r\n0\r\n\r\n',
    "empty-size-line": b"\r\na\r\n0\r\n\r\n",
    "not-hex": b"zz\r\n",
    "overflow": b"FFFFFFFFFFFFFFFFF\r\n",
    "minus": b"-1\r\na\r\n0\r\n\r\n",
    "plus": b"+1\r\na\r\n0\r\n\r\n",
    "0x": b"0x1\r\na\r\n0\r\n\r\n",
    "data-not-followed-by-crlf": b"1\r\nab\r\n0\r\n\r\n",
    "bare-lf-after-data": b"1\r\na\n0\r\n\r\n",
    "bare-cr-after-data": b"1\r\na\r\r\n0\r\n\r\n",
    "bare-lf-after-size": b"1\na\r\n0\r\n\r\n",
    "bare-lf-after-last-chunk": b"1\r\na\r\n0\n\r\n",
    "space-before-colon": b"1\r\na\r\n0\r\nX : y\r\n\r\n",
    "obs-fold": b"1\r\na\r\n0\r\nX: y\r\n z\r\n\r\n",
    "trailer-starts-with-tab": b"1\r\na\r\n0\r\n\tX: y\r\n\r\n",
    "trailer-without-colon": b"1\r\na\r\n0\r\nX\r\n\r\n",
    "trailer-without-name": b"1\r\na\r\n0\r\n: y\r\n\r\n",
    "nul-in-trailer": b"1\r\na\r\n0\r\nX: a\x00b\r\n\r\n",
    "bare-lf-in-trailers": b"1\r\na\r\n0\r\nX: y\n\r\n",
    "bare-lf-ending-trailers": b"1\r\na\r\n0\r\n\n",
}
# Refused by the decoder, though llhttp reads them: a size of more than 16 digits (llhttp
# counts only significant ones) and an extension with no value.
STRICTER_THAN_LLHTTP = {
    "17-hex-digits": b"00000000000000001\r\na\r\n0\r\n\r\n",
    "empty-extension-value": b"1;a=\r\na\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_llhttp_refuses_the_invalid_bodies(name: str) -> None:
    """The list is llhttp's strictness: a guard against a case llhttp would read."""
    with pytest.raises(httptools.HttpParserError):
        parse_with_llhttp(HEAD + INVALID[name])


@pytest.mark.parametrize("name", sorted(INVALID | STRICTER_THAN_LLHTTP))
def test_invalid_bodies_are_400_however_the_reads_are_split(name: str) -> None:
    body = (INVALID | STRICTER_THAN_LLHTTP)[name]
    splits = [[], list(range(len(body)))] + [[cut] for cut in range(1, len(body))]
    for cuts in splits:
        with pytest.raises(HttpError) as refused:
            decode(body, cuts)
        assert refused.value.status == 400, cuts


def test_trailers_over_the_count_limit_are_431() -> None:
    fields = b"".join(b"X-%d: 1\r\n" % number for number in range(3))
    assert decode(b"0\r\n" + fields + b"\r\n", [], 1000, 3)[2] is not None
    fields += b"X-3: 1\r\n"
    for cuts in ([], [len(fields)]):
        with pytest.raises(HttpError) as refused:
            decode(b"0\r\n" + fields + b"\r\n", cuts, 1000, 3)
        assert refused.value.status == 431


def test_trailers_over_the_byte_limit_are_431_even_unfinished() -> None:
    line = b"X: " + b"v" * 27  # 30 bytes, 32 with its CRLF
    assert decode(b"0\r\n" + line + b"\r\n\r\n", [], 32, 10)[2] is not None
    with pytest.raises(HttpError) as refused:
        decode(b"0\r\n" + line + b"v\r\n\r\n", [], 32, 10)
    assert refused.value.status == 431
    decoder = ChunkedBody(32, 10)  # a line still arriving: refused once it cannot fit
    decoder.feed(b"0\r\n" + line + b"vv", 0, [])
    assert decoder.part is TRAILERS
    with pytest.raises(HttpError) as refused:
        decoder.feed(b"v", 0, [])
    assert refused.value.status == 431


def test_trailers_at_the_byte_limit_pass_however_the_reads_cut_them() -> None:
    """The CR of the empty line that ends the trailers, held at the end of a read, is not a
    trailer byte: cut there, a section at the limit was once refused."""
    body = b"0\r\nX: " + b"v" * 27 + b"\r\n\r\n"  # a 32-byte trailer section
    for cut in range(len(body)):
        assert decode(body, [cut], 32, 10)[2] == len(body)


def test_a_chunk_line_too_long_to_be_one_is_refused_before_its_end() -> None:
    decoder = ChunkedBody(LIMIT_BYTES, LIMIT_COUNT)
    with pytest.raises(HttpError) as refused:
        for _ in range(100):
            decoder.feed(b";a=" + b"b" * 100, 0, [])
    assert refused.value.status == 400


@pytest.mark.parametrize("cut", [None, 10, MAX_CHUNK_LINE_BYTES // 2, MAX_CHUNK_LINE_BYTES + 2])
def test_a_chunk_line_too_long_is_refused_in_one_read_as_in_several(cut: int | None) -> None:
    """A line over MAX_CHUNK_LINE_BYTES is "not a chunk line" when the read cuts it: one
    that arrives whole is not one either, or the body's acceptance would depend on where
    the client's reads were cut."""
    line = b"1;a=" + b"b" * MAX_CHUNK_LINE_BYTES
    with pytest.raises(HttpError) as refused:
        decode(line + b"\r\nx\r\n0\r\n\r\n", [] if cut is None else [cut])
    assert refused.value.status == 400
