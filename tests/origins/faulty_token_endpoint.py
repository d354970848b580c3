#!/usr/bin/env python3
"""A stand-in for a faulty OAuth 2.0 token endpoint (tests/token_faults.rs): plain HTTP/1.1 on
127.0.0.1, written on raw sockets so it can misbehave on demand. The request path picks the
fault; every answer that carries a body also carries bytes the test looks for in everything
tollgate writes (they must never appear there):

  /slow             waits --slow-seconds, then answers a valid token
  /status-500       500 with a JSON error whose description quotes a secret
  /not-json         200, an HTML page
  /no-token         200, JSON without access_token
  /wrong-type       200, JSON whose access_token is a number
  /hang-mid-body    200 with Content-Length 4096, 40 bytes of a token, then silence
  anything else     200, a valid token (the endpoint works)

Prints "ready <port>" on stdout once listening; every request as "request <path>" on stderr.
"""

import argparse
import socket
import sys
import threading
import time

MARKER = "LEAKMARK-7f3a"


def answer(status, body, content_type="application/json", length=None):
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body.encode()


def read_request(conn):
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(4096)
        if not chunk:
            break
        body += chunk
    return lines[0].split(" ")[1]


def serve(conn, slow_seconds):
    conn.settimeout(30)
    try:
        path = read_request(conn)
        if path is None:
            return
        print(f"request {path}", file=sys.stderr, flush=True)
        valid = '{"access_token":"tok-%s","token_type":"Bearer","expires_in":300}' % MARKER
        if path == "/slow":
            time.sleep(slow_seconds)
            conn.sendall(answer("200 OK", valid))
        elif path == "/status-500":
            body = '{"error":"server_error","error_description":"client_secret=%s rejected"}' % MARKER
            conn.sendall(answer("500 Internal Server Error", body))
        elif path == "/not-json":
            conn.sendall(answer("200 OK", f"<html>token tok-{MARKER}</html>", "text/html"))
        elif path == "/no-token":
            conn.sendall(answer("200 OK", '{"token":"tok-%s","token_type":"Bearer"}' % MARKER))
        elif path == "/wrong-type":
            body = '{"access_token":12345,"refresh_token":"rt-%s","token_type":"Bearer"}' % MARKER
            conn.sendall(answer("200 OK", body))
        elif path == "/hang-mid-body":
            conn.sendall(answer("200 OK", valid[:40], length=4096))
            time.sleep(30)
        else:
            conn.sendall(answer("200 OK", valid))
    except OSError:
        pass
    finally:
        conn.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--slow-seconds", type=float, default=5.0)
    args = p.parse_args()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(64)
    print(f"ready {listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, args.slow_seconds), daemon=True).start()


if __name__ == "__main__":
    main()
