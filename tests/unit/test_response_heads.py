"""Unit tests for http_response.ResponseHeads: response heads reach llhttp whole and bounded,
however the app splits them across reads; trailers are bounded too."""

from __future__ import annotations

import httptools
import pytest

from proxy.http1.http_response import ResponseHeads, ResponseTooLarge

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Long: " + b"v" * 200
        + b"\r\nContent-Length: 2\r\n\r\n")
INTERIM = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"


class _Recorder:
    """llhttp's view of what it was fed: each callback, with the pieces as they came."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.heads_done = 0
        self.body = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.heads_done += 1

    def on_body(self, body: bytes) -> None:
        self.body += body


def _relay(reads: list[bytes], heads: ResponseHeads,
           head_count: int = 1) -> tuple[list[bytes], _Recorder]:
    """Do what the app connection does with each read, for a response of ``head_count``
    heads (1xx ones, then the final one); return the pieces llhttp parsed."""
    recorder = _Recorder()
    parser = httptools.HttpResponseParser(recorder)
    pieces: list[bytes] = []
    for read in reads:
        data: bytes | memoryview = read
        while data:
            done = recorder.heads_done
            if recorder.heads_done < head_count:
                piece, data = heads.take_head(data)
            else:
                piece, data = data, b""
            if piece:
                pieces.append(bytes(piece))
                parser.feed_data(piece)
            if recorder.heads_done > done:
                heads.head_done()
    return pieces, recorder


def _split(message: bytes, size: int) -> list[bytes]:
    return [message[i:i + size] for i in range(0, len(message), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(HEAD), len(HEAD) + 2])
def test_a_head_split_anywhere_reaches_llhttp_in_whole_lines(size: int) -> None:
    pieces, recorder = _relay(_split(HEAD + b"ok", size), ResponseHeads(len(HEAD)))
    assert b"".join(pieces) == HEAD + b"ok"
    assert recorder.headers == [(b"Content-Type", b"text/plain"), (b"X-Long", b"v" * 200),
                                (b"Content-Length", b"2")]
    assert recorder.body == b"ok"
    parsed = 0
    for piece in pieces:
        parsed += len(piece)
        if parsed < len(HEAD):  # within the head: lines are cut only at their CRLF
            assert piece.endswith(b"\r"), f"a line was cut for llhttp: {piece!r}"


@pytest.mark.parametrize("size", [1, 5, 50, 1000])
def test_a_head_of_the_limit_passes_and_one_byte_more_is_refused(size: int) -> None:
    _, recorder = _relay(_split(HEAD, size), ResponseHeads(len(HEAD)))
    assert recorder.heads_done == 1
    with pytest.raises(ResponseTooLarge):
        _relay(_split(HEAD, size), ResponseHeads(len(HEAD) - 1))


def test_an_unended_head_is_refused_as_soon_as_it_reaches_the_limit() -> None:
    heads = ResponseHeads(1024)
    heads.take_head(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 900)
    with pytest.raises(ResponseTooLarge):
        heads.take_head(b"a" * 200)


def test_each_head_has_the_whole_limit() -> None:
    _, recorder = _relay(_split(INTERIM + HEAD + b"ok", 10), ResponseHeads(len(HEAD)), 2)
    assert recorder.heads_done == 2 and recorder.body == b"ok"


def test_a_new_exchange_starts_from_nothing() -> None:
    heads = ResponseHeads(1024)
    heads.take_head(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 900)
    heads.start()
    assert heads.take_head(HEAD[:60])[0] == HEAD[:HEAD.rfind(b"\n", 0, 60)]


def test_what_cannot_begin_a_response_goes_to_llhttp_at_once() -> None:
    heads = ResponseHeads(1024)
    assert heads.take_head(b"HTTP/1.1 200") == (b"", b""), "held: it may be a response"
    heads.start()
    assert heads.take_head(b"SSH-2.0-OpenSSH_9.2") == (b"SSH-2.0-OpenSSH_9.2", b"")


def test_trailer_fields_are_counted_as_they_complete() -> None:
    heads = ResponseHeads(1024)
    heads.trailer_field(b"X-A", b"v" * 1000)  # 1007 bytes with ": " and CRLF
    with pytest.raises(ResponseTooLarge):
        heads.trailer_field(b"X-B", b"v" * 20)


def test_reads_without_a_body_byte_are_counted_until_one_comes() -> None:
    heads = ResponseHeads(1024)
    heads.body_read(1000, carried_body=False)
    heads.body_read(1000, carried_body=True)  # a body byte: the count starts again
    heads.body_read(1000, carried_body=False)
    with pytest.raises(ResponseTooLarge):
        heads.body_read(1000, carried_body=False)
