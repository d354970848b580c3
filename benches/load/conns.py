"""Holds N agent connections open through tollgate's forward listener and reads tollgate's
memory while they are open: the client of benches/conns_rss.sh (issue 13: "peak RSS <= 48 MiB
with 1,000 open agent connections").

    conns.py --pid PID --proxy PORT --origin-port PORT [-n 1000] [--tls CA.pem] [--hold S]

Plain: each connection sends one keep-alive GET http://127.0.0.1:ORIGIN/hello (absolute form)
and reads the whole answer. --tls: each sends CONNECT 127.0.0.1:ORIGIN, TLS to the leaf
tollgate mints (verified against CA.pem), then one keep-alive GET /hello inside the tunnel.
All stay open; then it prints tollgate's VmHWM, VmRSS and open descriptors (/proc/PID) before
the first connection, once every connection has its answer, after --hold seconds more, and
after all are closed. Every step has a timeout; any failed connection fails the run (exit 1),
since the reading would no longer be "with N open connections".
"""

import argparse
import asyncio
import os
import ssl
import sys
import time

STEP_TIMEOUT = 15.0  # seconds for one connection's connect, CONNECT, handshake or answer
OPENING_AT_ONCE = 64  # connections being opened at the same time
MAX_HEAD = 64 * 1024


def memory(pid):
    """VmHWM and VmRSS in KiB, and the count of open descriptors, of process PID."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return values["VmHWM"], values["VmRSS"], fds


def report(label, pid, open_now):
    """Prints one reading; returns tollgate's open descriptors."""
    hwm, rss, fds = memory(pid)
    print(
        f"{label:<28} open={open_now:>5}  VmHWM={hwm:>8} KiB ({hwm / 1024:7.2f} MiB)"
        f"  VmRSS={rss:>8} KiB ({rss / 1024:7.2f} MiB)  tollgate fds={fds}",
        flush=True,
    )
    return fds


async def read_answer(reader):
    """Reads one response head and its Content-Length body; returns the status."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEAD:
        raise RuntimeError("response head too large")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length > MAX_HEAD:
        raise RuntimeError("response body too large")
    if length:
        await reader.readexactly(length)
    return status


async def open_one(args, tls, gate):
    """One connection with its one answered request, or an exception."""
    async with gate:
        step = STEP_TIMEOUT
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", args.proxy), step
        )
        origin = f"127.0.0.1:{args.origin_port}"
        if tls is not None:
            writer.write(f"CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), step)
            if head.split(b" ", 2)[1] != b"200":
                # tollgate's refusals carry a JSON body naming the reason: show its start.
                body = await asyncio.wait_for(reader.read(300), step)
                raise RuntimeError(f"CONNECT answered {head.splitlines()[0]!r}: {body!r}")
            await asyncio.wait_for(
                writer.start_tls(tls, server_hostname="127.0.0.1"), step
            )
            target = "/hello"
        else:
            target = f"http://{origin}/hello"
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {origin}\r\n\r\n".encode())
        status = await asyncio.wait_for(read_answer(reader), step)
        if status != 200:
            raise RuntimeError(f"GET answered {status}")
        return reader, writer


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--proxy", type=int, required=True)
    parser.add_argument("--origin-port", type=int, required=True)
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--tls", metavar="CA_PEM")
    parser.add_argument("--hold", type=float, default=2.0)
    args = parser.parse_args()
    tls = None
    if args.tls:
        tls = ssl.create_default_context(cafile=args.tls)

    fds_before = report("before", args.pid, 0)
    gate = asyncio.Semaphore(OPENING_AT_ONCE)
    started = time.monotonic()
    results = await asyncio.gather(
        *(open_one(args, tls, gate) for _ in range(args.n)), return_exceptions=True
    )
    conns = [r for r in results if not isinstance(r, BaseException)]
    failures = [r for r in results if isinstance(r, BaseException)]
    print(
        f"opened {len(conns)} of {args.n} connections in {time.monotonic() - started:.2f} s"
        f" ({'intercepted TLS' if tls else 'plain HTTP'}), {len(failures)} failed",
        flush=True,
    )
    for failure in failures[:5]:
        print(f"  failure: {failure!r}", file=sys.stderr)
    report(f"all {len(conns)} answered", args.pid, len(conns))
    await asyncio.sleep(args.hold)
    still_open = sum(1 for reader, _ in conns if not reader.at_eof())
    report(f"after holding {args.hold:g} s", args.pid, still_open)
    for _, writer in conns:
        writer.close()
    for _, writer in conns:
        try:
            await asyncio.wait_for(writer.wait_closed(), STEP_TIMEOUT)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass
    # The descriptors go as tollgate notices the closes (and drops its upstream connections):
    # poll, bounded, until it holds no more than before, then take the last reading.
    deadline = time.monotonic() + 10
    while memory(args.pid)[2] > fds_before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    report("after closing", args.pid, 0)
    return 0 if not failures and still_open == args.n else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
