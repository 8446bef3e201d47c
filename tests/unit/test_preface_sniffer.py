"""The HTTP/2 preface is recognised however the first reads split it."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from proxy.http1.client_requests import PrefaceSniffer
from proxy.http2.frames import PREFACE


def _feed(reads: list[bytes]) -> tuple[PrefaceSniffer, list[bytes]]:
    sniffer = PrefaceSniffer()
    parsed: list[bytes] = []
    for read in reads:
        out = sniffer.feed(read)
        if out is not None:
            parsed.append(bytes(out))
        if sniffer.http2:
            break  # the connection is the HTTP/2 relay's from here
    return sniffer, parsed


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(st.integers(min_value=0, max_value=64), max_size=6), st.binary(max_size=20))
def test_the_preface_split_anywhere_is_http2_with_what_follows_it(
        cuts: list[int], after: bytes) -> None:
    sniffer, parsed = _feed(_split(PREFACE + after, cuts))
    assert sniffer.http2
    assert parsed == []
    assert sniffer.after_preface == after[:len(sniffer.after_preface)]


def test_http1_is_handed_back_whole_once_it_stops_matching() -> None:
    sniffer, parsed = _feed([b"PR", b"I", b"NCIPAL / HTTP/1.1\r\n"])
    assert not sniffer.http2
    assert parsed == [b"PRINCIPAL / HTTP/1.1\r\n"]


def test_a_request_that_shares_no_byte_with_the_preface_passes_at_once() -> None:
    sniffer, parsed = _feed([b"GET / HTTP/1.1\r\n"])
    assert not sniffer.http2
    assert parsed == [b"GET / HTTP/1.1\r\n"]
