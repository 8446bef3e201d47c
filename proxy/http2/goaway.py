"""The GOAWAY sequence that ends an HTTP/2 connection without failing a stream: what it
knows, and which of our frames each step takes.  Sans-IO: ``session.H2Session`` keeps
the connection's state and its streams, asks at each event, and sends the frames
appended to the list it passes.

``ANNOUNCED``: GOAWAY with the largest stream id (the client stops opening streams
but nothing it already sent is refused), SETTINGS shrinking the client's HPACK table
to 0, and a PING, and a second PING once the first comes back.  ``FINAL``: once the
second PING comes back, the client has seen the GOAWAY and every stream it opened
before is here, so the real last stream id is known; streams up to it run to
completion, later ones are refused (REFUSED_STREAM: not processed, the client may retry
them elsewhere) and never reach the app, not even their header blocks: the cleared
table (``_clear_table``) is what lets the app's HPACK context do without them.  The
PING timer moves on without the PINGs' ACKs but never without the SETTINGS' ACK
while streams are open: a stream a client opens before that ACK is served, and the
final GOAWAY, sent at the ACK, names it.  A GOAWAY asked for before the connection's
first stream waits for it: a GOAWAY before any stream makes a gRPC client fail its
call rather than move on.
"""

from __future__ import annotations

from typing import Final

from proxy.http2 import frames as f

# Our two PINGs' payloads, which tell their ACKs from those of the app's PINGs.  Two
# rounds, not one: a client may already have queued a new stream when it reads our
# GOAWAY, and gRPC's C core writes its PING ACK *before* the streams queued in the same
# write.  Those streams always arrive before the second round's ACK.
FIRST_PING: Final = b"drainpx1"
SECOND_PING: Final = b"drainpx2"


def is_our_ping(opaque: bytes) -> bool:
    """A PING ACK's payload is one of ours: the app never sent that PING."""
    return opaque in (FIRST_PING, SECOND_PING)


class GoawaySequence:
    """What one connection's sequence knows: why it started (or will, at the first
    stream), the largest stream id a GOAWAY may still name, and how far the clearing of
    the client's HPACK table has got.  It decides which frames each step sends and when
    the final GOAWAY may go; the session makes the state changes and ends the streams."""

    __slots__ = ("_app_settings", "_clear_at", "_client_acks", "_table_cleared", "deferred",
                 "final_due", "last_stream", "reason")

    def __init__(self) -> None:
        self.last_stream = f.MAX_STREAM_ID  # no GOAWAY to the client may raise this
        self.deferred = ""  # a GOAWAY asked for before the first stream
        self.reason = ""  # why the sequence started
        self.final_due = False  # the final GOAWAY waits for the table to be cleared
        # The client's HPACK table, cleared at the first GOAWAY (``_clear_table``).
        self._app_settings = 0  # the app's SETTINGS frames relayed to the client
        self._clear_at = 0  # which SETTINGS the client acknowledges is ours (0: none sent)
        self._client_acks = 0
        self._table_cleared = False

    def defer(self, reason: str) -> None:
        """Asked for before the connection's first stream: the first reason waits for it."""
        self.deferred = self.deferred or reason

    def start(self, reason: str) -> None:
        """The sequence begins; ``reason`` is the connection's close reason once it ends."""
        self.reason = reason

    def announce(self, app_settings_seen: bool, out: list[bytes]) -> None:
        """``ANNOUNCED``'s frames: GOAWAY with the largest id, SETTINGS clearing the
        client's table, and the first PING."""
        out.append(f.goaway(self.last_stream, f.NO_ERROR))
        self._clear_table(app_settings_seen, out)  # first: its ACK comes before the PING's
        out.append(f.ping(FIRST_PING))

    def ping_acked(self, opaque: bytes, out: list[bytes]) -> bool:
        """Our PING ``opaque`` came back while announced: after the first, the second
        PING; after the second, True: the final GOAWAY is due."""
        if opaque == FIRST_PING:
            out.append(f.ping(SECOND_PING))
            return False
        return True

    def settings_acked(self) -> bool:
        """The client acknowledged SETTINGS; True if they were ours, which the app never
        sent: the client's table is cleared now."""
        self._client_acks += 1  # SETTINGS are acknowledged in the order they were sent
        if self._client_acks != self._clear_at:
            return False
        self._table_cleared = True
        return True

    def final(self, last_stream: int, streams_open: bool, out: list[bytes]) -> bool:
        """The final GOAWAY, naming ``last_stream`` at most; False if it must wait.
        Streams opened after it are refused, their header blocks dropped: with streams
        still to run, it waits (``final_due``) until the client's HPACK table is
        cleared (``_clear_table``); until then new streams are still served."""
        if streams_open and not self._table_cleared:
            self.final_due = True
            return False
        self.final_due = False
        self.last_stream = min(self.last_stream, last_stream)
        out.append(f.goaway(self.last_stream, f.NO_ERROR))
        return True

    def app_goaway(self, last_stream: int) -> None:
        """The app is going away itself: no GOAWAY of ours may name a higher id."""
        self.last_stream = min(self.last_stream, last_stream)

    def app_settings(self, buffer: bytearray, start: int, end: int) -> None:
        """The app's SETTINGS, payload ``buffer[start:end]``, before they are relayed:
        counted (the ACK of ours is told by its place among theirs), and once ours are
        sent, lowered in place so that they never grow the client's table again."""
        self._app_settings += 1
        if self._clear_at:
            f.lower_setting(buffer, start, end, f.SETTINGS_HEADER_TABLE_SIZE, 0)

    def _clear_table(self, app_settings_seen: bool, out: list[bytes]) -> None:
        """Ask the client to shrink its HPACK table to 0 (SETTINGS_HEADER_TABLE_SIZE).

        The app must see every header block the client encodes with its dynamic table,
        or the two tables drift apart and the app fails the connection; so a stream
        the proxy refuses would still have to reach the app, which would then run it.
        Once the client has acknowledged this, its later blocks neither add to the
        table nor refer to it (RFC 7541 section 4.2), so a block can be dropped and the
        app's table, however stale, is never consulted.  The ACK is told from those of
        the app's SETTINGS by its place: a peer acknowledges SETTINGS in order."""
        if app_settings_seen:
            self._clear_at = self._app_settings + 1
        else:
            self._clear_at = 2  # held by the session, right after the app's first SETTINGS
        out.append(f.settings(f.SETTINGS_HEADER_TABLE_SIZE, 0))
