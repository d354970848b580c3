#!/usr/bin/env python3
"""Servers for the network-namespace tests (tests/support/netns.rs, tests/redirect_netns.rs).

    netns_peer.py probe --port P
        Listens on 127.0.0.1:P and [::1]:P, where the kernel's REDIRECT delivers a pod's
        outbound connections, reads each connection's original destination (SO_ORIGINAL_DST,
        optname 80 at SOL_IP; IP6T_SO_ORIGINAL_DST, optname 80 at SOL_IPV6) and answers
        HTTP/1.1 200 {"via": "probe", "original_dst": "ip:port"} ([ip]:port for IPv6).

    netns_peer.py origin --name N --port P [--port P2 ...]
        Listens on 0.0.0.0 and [::] (IPv6-only) on each port and answers
        {"via": N, "local": "ip:port"}: which server a connection really reached.

Prints "ready" once every socket listens. Standard library only: it runs as a UID without a
home directory, under Debian's /usr/bin/python3.
"""
import argparse
import json
import selectors
import socket
import struct
import sys

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80


def original_dst(conn):
    if conn.family == socket.AF_INET:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, addr = struct.unpack_from("!H4s", raw, 2)
        return "%s:%d" % (socket.inet_ntop(socket.AF_INET, addr), port)
    raw = conn.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)  # SOL_IPV6 == IPPROTO_IPV6
    port = struct.unpack_from("!H", raw, 2)[0]
    addr = raw[8:24]
    return "[%s]:%d" % (socket.inet_ntop(socket.AF_INET6, addr), port)


def fmt(addr, family):
    return ("[%s]:%d" if family == socket.AF_INET6 else "%s:%d") % (addr[0], addr[1])


def answer(conn, body):
    conn.settimeout(5)
    head = b""
    try:
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = conn.recv(4096)
            if not chunk:
                break
            head += chunk
    except OSError:
        pass
    payload = json.dumps(body).encode()
    try:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + b"content-length: %d\r\n\r\n" % len(payload)
            + payload
        )
    except OSError:
        pass
    conn.close()


def listen(family, host, port):
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["probe", "origin"])
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--name", default="origin")
    args = parser.parse_args()
    sel = selectors.DefaultSelector()
    if args.mode == "probe":
        hosts = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
    else:
        hosts = [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
    for port in args.port:
        for family, host in hosts:
            sel.register(listen(family, host, port), selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            conn, _ = key.fileobj.accept()
            if args.mode == "probe":
                try:
                    body = {"via": "probe", "original_dst": original_dst(conn)}
                except Exception as e:  # answer with the error, keep serving
                    body = {"via": "probe", "error": repr(e)}
            else:
                body = {"via": args.name, "local": fmt(conn.getsockname(), conn.family)}
            answer(conn, body)


if __name__ == "__main__":
    sys.exit(main())
