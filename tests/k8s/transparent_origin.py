#!/usr/bin/env python3
"""Origins for the transparent-listener tests (tests/transparent_netns.rs), in the origin
namespace, on 0.0.0.0 and [::] (IPv6-only) each:

    transparent_origin.py --name N --cert C --key K
        port 80:   HTTP/1.1, answers every request with JSON
                   {"via": N, "method", "path", "host", "tls": false, "local", "peer"},
                   except GET …/stream?n=BYTES&pace=SECONDS: BYTES bytes of "x", 64 KiB per
                   write, SECONDS between writes (a large, slow response to cut with a kill)
        port 443:  the same over TLS with C/K (HTTP/1.1 only)
        port 2222: server speaks first: sends "BANNER N\\n", then echoes each line back

Prints "ready" once every socket listens. Standard library only: Debian's /usr/bin/python3.
"""
import argparse
import json
import socket
import socketserver
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def fmt(addr, family):
    return ("[%s]:%d" if family == socket.AF_INET6 else "%s:%d") % (addr[0], addr[1])


def make_handler(name, tls):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def stream(self):
            query = dict(
                p.split("=", 1) for p in self.path.partition("?")[2].split("&") if "=" in p
            )
            n, pace = int(query.get("n", "0")), float(query.get("pace", "0"))
            self.close_connection = True
            self.send_response(200)
            self.send_header("content-type", "application/octet-stream")
            self.send_header("content-length", str(n))
            self.end_headers()
            block, sent = b"x" * 65536, 0
            try:
                while sent < n:
                    k = min(len(block), n - sent)
                    self.wfile.write(block[:k])
                    sent += k
                    if pace:
                        time.sleep(pace)
            except OSError:
                pass  # the reader went away (or tollgate cut it)

        def answer(self):
            if self.command == "GET" and self.path.partition("?")[0].endswith("/stream"):
                return self.stream()
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            sock = self.connection
            body = json.dumps(
                {
                    "via": name,
                    "method": self.command,
                    "path": self.path,
                    "host": self.headers.get("host"),
                    "tls": tls,
                    "local": fmt(sock.getsockname(), sock.family),
                    "peer": fmt(sock.getpeername(), sock.family),
                }
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = answer

        def log_message(self, *args):
            pass

    return Handler


def http_server(family, host, port, handler, context=None):
    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True
        allow_reuse_address = True

        def server_bind(self):
            if family == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            super().server_bind()

        def get_request(self):
            conn, addr = super().get_request()
            if context is not None:
                conn.settimeout(10)
                conn = context.wrap_socket(conn, server_side=True)
            return conn, addr

    return Server((host, port), handler)


def banner_server(family, host, port, name):
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            self.connection.settimeout(10)
            self.wfile.write(b"BANNER %s\n" % name.encode())
            for line in self.rfile:
                self.wfile.write(line)

    class Server(socketserver.ThreadingTCPServer):
        address_family = family
        daemon_threads = True
        allow_reuse_address = True

        def server_bind(self):
            if family == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            super().server_bind()

    return Server((host, port), Handler)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="origin")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.set_alpn_protocols(["http/1.1"])
    servers = []
    for family, host in [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]:
        servers.append(http_server(family, host, 80, make_handler(args.name, False)))
        servers.append(
            http_server(family, host, 443, make_handler(args.name, True), context)
        )
        servers.append(banner_server(family, host, 2222, args.name))
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
