#!/usr/bin/env python3
"""A real HTTP/1.1 origin for tollgate's integration tests (stdlib only).

Usage:
    echo_origin.py [--port N] [--cert FILE --key FILE [--client-ca FILE]] [--jwks-url URL]
        Listens on 127.0.0.1:N (N=0: an ephemeral port, the default), optionally TLS;
        with --client-ca it asks for a client certificate (optional) and verifies it
        against that CA; with --jwks-url it serves /jwt/... (below).
        Prints exactly one line "ready <port>" on stdout once the socket accepts, then
        serves until killed. Request logs go to stderr.
    echo_origin.py --bytes-sha256 N
        Prints the SHA-256 (hex) of the body that /bytes?n=N serves, and exits.

Endpoints (any method unless noted):
    /echo            200 JSON {"method","path","query","headers":{lower-cased name: value},
                     "body_len","body_sha256","protocol","tls","client_cert"}; client_cert is
                     null or {"subject": "CN=…", "san": ["URI:spiffe://…", "DNS:…"]}. The
                     request body is read by
                     Content-Length or chunked transfer coding and hashed, never stored.
    /sse?release=P   text/event-stream, chunked: sends "data: first\\n\\n" and flushes, then
                     polls every 20 ms until file P exists (gives up after 30 s and sends
                     "data: gave-up\\n\\n" instead), then sends "data: second\\n\\n" and ends.
                     A test proves streaming by seeing "first" before it creates P.
    /bytes?n=N       N deterministic pseudo-random bytes (see gen_bytes), streamed in 64 KiB
                     writes with Content-Length; add &chunked=1 for chunked transfer coding.
    /status/<code>   that status with a small JSON body (none for 1xx/204/304).
    /delay?ms=N      waits N ms (at most 60 s), then 200 {"delayed_ms": N}: for timeout tests.
    /jwt/...         (only with --jwks-url) a resource server that checks
                     "Authorization: Bearer <JWT>": fetches the JWK Set from the URL on every
                     request (tollgate's admin /.well-known/jwks.json; so a rotated key is seen
                     at once), verifies the signature with joserfc (an independent JOSE
                     implementation; only ES256 and EdDSA accepted) and answers 200
                     {"verified": true, "header": {...}, "claims": {...}, "path": P} or 401
                     {"verified": false, "error": "...", "path": P}. It checks no claim (exp,
                     aud, ...): the test checks every claim itself.
"""

import argparse
import hashlib
import http.server
import json
import os
import ssl
import sys
import time
import urllib.parse
import urllib.request

CHUNK = 64 * 1024


def gen_bytes(n):
    """Yields n deterministic bytes in chunks: SHA-512 in counter mode over b"tollgate-bytes"."""
    produced = 0
    counter = 0
    buf = bytearray()
    while produced < n:
        while len(buf) < CHUNK:
            buf += hashlib.sha512(b"tollgate-bytes:%d" % counter).digest()
            counter += 1
        take = min(CHUNK, n - produced)
        yield bytes(buf[:take])
        del buf[:take]
        produced += take


def bytes_sha256(n):
    h = hashlib.sha256()
    for chunk in gen_bytes(n):
        h.update(chunk)
    return h.hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tollgate-echo-origin/1"

    # One method for every verb: the path decides.
    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (ConnectionError, ssl.SSLError, TimeoutError) as e:
            self.log_message("connection error: %r", e)
            self.close_connection = True

    def __getattr__(self, name):
        if name.startswith("do_"):
            return self.dispatch
        raise AttributeError(name)

    def dispatch(self):
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        query = urllib.parse.parse_qs(url.query)
        if path == "/echo":
            return self.echo(url)
        if path == "/sse":
            return self.sse(query)
        if path == "/bytes":
            return self.bytes_(query)
        if path.startswith("/status/"):
            return self.status(path[len("/status/"):])
        if path == "/delay":
            return self.delay(query)
        if path.startswith("/jwt/") and self.server.jwks_url:
            return self.jwt_(path)
        self.drain_body()
        self.send_json(404, {"error": "not_found", "path": path})

    # --- helpers -------------------------------------------------------------------------

    def read_body(self):
        """Reads the request body (Content-Length or chunked); returns (length, sha256 hex)."""
        h = hashlib.sha256()
        total = 0
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("eof in chunk size")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    # trailers, up to the empty line
                    while True:
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, CHUNK))
                    if not data:
                        raise ConnectionError("eof in chunk")
                    h.update(data)
                    total += len(data)
                    remaining -= len(data)
                self.rfile.readline(3)  # CRLF after the chunk
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = self.rfile.read(min(remaining, CHUNK))
                if not data:
                    raise ConnectionError("eof in body")
                h.update(data)
                total += len(data)
                remaining -= len(data)
        return total, h.hexdigest()

    def drain_body(self):
        if self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding"):
            self.read_body()

    def send_json(self, code, obj, extra_headers=()):
        body = (json.dumps(obj, sort_keys=True) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        for k, v in extra_headers:
            self.send_header(k, v)
        if code in (204, 304) or 100 <= code < 200:
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def write_chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_chunks(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # --- endpoints -----------------------------------------------------------------------

    def echo(self, url):
        body_len, body_sha = self.read_body()
        headers = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = headers[k] + ", " + v if k in headers else v
        self.send_json(
            200,
            {
                "method": self.command,
                "path": url.path,
                "query": url.query,
                "headers": headers,
                "body_len": body_len,
                "body_sha256": body_sha,
                "protocol": self.request_version,
                "tls": isinstance(self.connection, ssl.SSLSocket),
                "client_cert": self.client_cert(),
            },
        )

    def client_cert(self):
        if not isinstance(self.connection, ssl.SSLSocket):
            return None
        cert = self.connection.getpeercert()
        if not cert:
            return None
        subject = ",".join("%s=%s" % kv for rdn in cert.get("subject", ()) for kv in rdn)
        subject = subject.replace("commonName=", "CN=")
        san = ["%s:%s" % (kind, value) for kind, value in cert.get("subjectAltName", ())]
        return {"subject": subject, "san": san}

    def sse(self, query):
        self.drain_body()
        release = (query.get("release") or [None])[0]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.write_chunk(b"data: first\n\n")
        deadline = time.monotonic() + 30
        released = False
        while release and time.monotonic() < deadline:
            if os.path.exists(release):
                released = True
                break
            time.sleep(0.02)
        self.write_chunk(b"data: second\n\n" if released else b"data: gave-up\n\n")
        self.end_chunks()

    def bytes_(self, query):
        self.drain_body()
        n = int((query.get("n") or ["0"])[0])
        chunked = (query.get("chunked") or ["0"])[0] not in ("0", "", "false")
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(n))
        self.end_headers()
        if self.command == "HEAD":
            return
        for chunk in gen_bytes(n):
            if chunked:
                self.write_chunk(chunk)
            else:
                self.wfile.write(chunk)
        if chunked:
            self.end_chunks()
        self.wfile.flush()

    def status(self, code):
        self.drain_body()
        try:
            code = int(code)
        except ValueError:
            return self.send_json(400, {"error": "bad status"})
        self.send_json(code, {"status": code})

    def delay(self, query):
        self.drain_body()
        ms = min(int((query.get("ms") or ["0"])[0]), 60_000)
        time.sleep(ms / 1000)
        self.send_json(200, {"delayed_ms": ms})

    def jwt_(self, path):
        self.drain_body()
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return self.send_json(401, {"verified": False, "error": "no bearer token", "path": path})
        try:
            header, claims = verify_jwt(token.strip(), self.server.jwks_url)
        except Exception as e:  # every failure is a refusal, with its reason
            return self.send_json(
                401, {"verified": False, "error": "%s: %s" % (type(e).__name__, e), "path": path}
            )
        self.send_json(200, {"verified": True, "header": header, "claims": claims, "path": path})

    def log_message(self, fmt, *args):
        sys.stderr.write("echo_origin: %s %s\n" % (self.address_string(), fmt % args))
        sys.stderr.flush()


JWT_ALGORITHMS = ["ES256", "EdDSA"]


def verify_jwt(token, jwks_url):
    """Verifies a JWT's signature against the JWK Set at jwks_url (fetched now) with joserfc;
    returns (header, claims). Raises on any failure: unknown kid, other algorithm, bad
    signature, malformed token, JWKS unreachable."""
    import warnings

    from joserfc import jwt
    from joserfc.jwk import KeySet

    with urllib.request.urlopen(jwks_url, timeout=5) as r:
        key_set = KeySet.import_key_set(json.load(r))
    with warnings.catch_warnings():
        # joserfc flags the "EdDSA" name as deprecated by RFC 9864; tollgate uses it (SPEC §5).
        warnings.simplefilter("ignore")
        token = jwt.decode(token, key_set, algorithms=JWT_ALGORITHMS)
    return dict(token.header), dict(token.claims)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    tls_context = None
    jwks_url = None

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, in the request's own thread, so one slow or failing
        # client never blocks accept().
        if self.tls_context is None:
            return super().finish_request(request, client_address)
        try:
            tls = self.tls_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            sys.stderr.write("echo_origin: tls handshake from %s failed: %r\n" % (client_address, e))
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            try:
                tls.close()
            except OSError:
                pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--client-ca")
    ap.add_argument("--jwks-url")
    ap.add_argument("--bytes-sha256", type=int, metavar="N")
    args = ap.parse_args()

    if args.bytes_sha256 is not None:
        print(bytes_sha256(args.bytes_sha256))
        return

    server = Server(("127.0.0.1", args.port), Handler)
    server.jwks_url = args.jwks_url
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        ctx.set_alpn_protocols(["http/1.1"])
        if args.client_ca:
            ctx.load_verify_locations(args.client_ca)
            ctx.verify_mode = ssl.CERT_OPTIONAL
        server.tls_context = ctx
    # bind() and listen() happened in the constructor: connections queue from here on.
    print("ready %d" % server.server_address[1], flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
