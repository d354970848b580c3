#!/usr/bin/env python3
"""A Python "agent": one HTTP request with a real client library, result as one JSON line.

    py_agent.py --url URL [--proxy URL] [--client httpx|requests] [--http2]
                [--method M] [--header 'k: v']... [--data-file F]
                [--cacert FILE] [--proxy-cacert FILE]
                [--client-cert FILE --client-key FILE]
                [--proxy-client-cert FILE --proxy-client-key FILE] [--timeout SECONDS]

Without --proxy the request goes direct; environment proxy variables are never read.
--cacert is the only CA trusted for the origin's TLS as the agent sees it (through an
intercepting proxy that is tollgate's interception CA); --proxy-cacert is the CA trusted for
an https:// proxy (tollgate's TLS listener). --client-cert/--client-key present a certificate
to the origin (inside intercepted TLS), --proxy-client-cert/--proxy-client-key to the proxy.

Output (stdout, one line):
    {"status":int,"headers":{lower-cased},"body_len":int,"body_sha256":hex,
     "body_text":first 4 KiB as text or null,"http_version":"HTTP/1.1"|"HTTP/2"}
The body is read as a stream and hashed incrementally, before any content decoding (the bytes
the origin or proxy sent, after transfer decoding). A repeated header's values are joined
with ", ". On a transport error: {"error":"..."} and exit status 1.
"""

import argparse
import hashlib
import json
import ssl
import sys

TEXT_PREFIX = 4096


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--proxy")
    ap.add_argument("--client", choices=["httpx", "requests"], default="httpx")
    ap.add_argument("--http2", action="store_true", help="httpx only: offer HTTP/2 via ALPN")
    ap.add_argument("--method", default="GET")
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--data-file")
    ap.add_argument("--cacert")
    ap.add_argument("--proxy-cacert")
    ap.add_argument("--client-cert")
    ap.add_argument("--client-key")
    ap.add_argument("--proxy-client-cert")
    ap.add_argument("--proxy-client-key")
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()
    if args.http2 and args.client != "httpx":
        ap.error("--http2 needs --client httpx")
    return args


def parse_headers(raw):
    out = []
    for h in raw:
        name, sep, value = h.partition(":")
        if not sep:
            raise SystemExit("bad --header %r: expected 'name: value'" % h)
        out.append((name.strip(), value.strip()))
    return out


def tls_context(cafile, cert, key):
    ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def lower_headers(items):
    out = {}
    for k, v in items:
        k = k.lower()
        out[k] = out[k] + ", " + v if k in out else v
    return out


def result(status, headers, chunks, http_version):
    h = hashlib.sha256()
    n = 0
    prefix = bytearray()
    for chunk in chunks:
        h.update(chunk)
        n += len(chunk)
        if len(prefix) < TEXT_PREFIX:
            prefix += chunk[: TEXT_PREFIX - len(prefix)]
    try:
        text = bytes(prefix).decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "status": status,
        "headers": headers,
        "body_len": n,
        "body_sha256": h.hexdigest(),
        "body_text": text,
        "http_version": http_version,
    }


def run_httpx(args, headers, body):
    import httpx

    verify = tls_context(args.cacert, args.client_cert, args.client_key)
    proxy = None
    if args.proxy:
        proxy_ctx = None
        if args.proxy.startswith("https://"):
            proxy_ctx = tls_context(args.proxy_cacert, args.proxy_client_cert, args.proxy_client_key)
        proxy = httpx.Proxy(args.proxy, ssl_context=proxy_ctx)
    with httpx.Client(
        proxy=proxy,
        verify=verify,
        http2=args.http2,
        trust_env=False,
        timeout=args.timeout,
    ) as client:
        with client.stream(args.method, args.url, headers=headers, content=body) as resp:
            return result(
                resp.status_code,
                lower_headers(resp.headers.multi_items()),
                resp.iter_raw(),
                resp.http_version,
            )


def run_requests(args, headers, body):
    import requests
    from requests.adapters import HTTPAdapter

    s = requests.Session()
    s.trust_env = False
    verify = True
    if args.cacert:
        verify = args.cacert
    if args.proxy:
        s.proxies = {"http": args.proxy, "https": args.proxy}
        if args.proxy.startswith("https://"):
            proxy_ctx = tls_context(args.proxy_cacert, args.proxy_client_cert, args.proxy_client_key)

            class ProxyTLSAdapter(HTTPAdapter):
                # CONNECT tunnels (https:// targets): urllib3 uses proxy_ssl_context.
                def proxy_manager_for(self, proxy, **kw):
                    kw["proxy_ssl_context"] = proxy_ctx
                    return super().proxy_manager_for(proxy, **kw)

                # http:// targets are forwarded over a TLS connection to the proxy, whose pool
                # requests would leave unverified (CERT_NONE, since the URL is not https).
                def cert_verify(self, conn, url, verify, cert):
                    super().cert_verify(conn, url, verify, cert)
                    if not url.lower().startswith("https"):
                        conn.cert_reqs = "CERT_REQUIRED"
                        conn.ca_certs = args.proxy_cacert
                        conn.ca_cert_dir = None
                        if args.proxy_client_cert:
                            conn.cert_file = args.proxy_client_cert
                            conn.key_file = args.proxy_client_key

            s.mount("http://", ProxyTLSAdapter())
            s.mount("https://", ProxyTLSAdapter())
    cert = (args.client_cert, args.client_key) if args.client_cert else None
    resp = s.request(
        args.method,
        args.url,
        headers=dict(headers),
        data=body,
        verify=verify,
        cert=cert,
        stream=True,
        timeout=args.timeout,
    )
    with resp:
        version = {10: "HTTP/1.0", 11: "HTTP/1.1", 20: "HTTP/2"}.get(resp.raw.version, str(resp.raw.version))
        return result(
            resp.status_code,
            lower_headers(resp.raw.headers.items()),
            resp.raw.stream(65536, decode_content=False),
            version,
        )


def main():
    args = parse_args()
    headers = parse_headers(args.header)
    body = open(args.data_file, "rb") if args.data_file else None
    try:
        if args.client == "httpx":
            out = run_httpx(args, headers, body)
        else:
            out = run_requests(args, headers, body)
    except Exception as e:  # transport errors of either library, TLS errors, timeouts
        print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}), flush=True)
        sys.exit(1)
    finally:
        if body:
            body.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
