#!/usr/bin/env python3
"""Open flows through tollgate, cut by a kill (tests/kill_flows.rs, issue 15).

Runs its own origin (so it can pace a download and time every uploaded byte on arrival), opens
a "victim" flow (task `victim`) and a "bystander" flow (task `other`) through tollgate with a
real client (httpx, or curl), ends the victim's task (POST /v1/kill {"task": "victim"}, or
DELETE /v1/tasks/victim) once the victim is flowing, and prints one JSON object: for each flow
the bytes before the kill, the bytes after the kill's answer + 100 ms, whether it completed,
and the error the client saw.

usage: kill_flows.py MODE PROXY_URL ADMIN_URL [CA_PEM SERVER_CERT SERVER_KEY [SPIFFE_ID]]
MODE: slow | sse | h2 | tunnel | upload | intercept (HTTP/1.1 inside an intercepted CONNECT;
the kill names the caller's SPIFFE_ID, so there is no bystander of another caller)

usage: kill_flows.py callers PROXY_URL ADMIN_URL PROXY_CA VICTIM_CERT VICTIM_KEY VICTIM_ID
       BYSTANDER_CERT BYSTANDER_KEY
(two callers, each an mTLS client of tollgate's TLS listener with its own X.509-SVID, read a
slow response with curl; the kill names the victim's VICTIM_ID, and the bystander — another
SPIFFE ID — must go on receiving and finish)

usage: kill_flows.py transparent - ADMIN_URL INTERCEPT_CA SPIFFE_ID AGENT_UID ADMIN_CA
       ADMIN_CERT ADMIN_KEY
(tests/transparent_netns.rs: run as root inside the pod's network namespace; curl, as
AGENT_UID, reads a slow 200 MB response from http://api.test (IPv4) and from https://api.test
(IPv6, HTTP/2 inside), both
redirected to tollgate's transparent listener, the second intercepted; the kill names the
pod's SPIFFE_ID over the mTLS admin API)
"""

import http.server
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

import httpx

CHUNK = 64 * 1024
MB = 1024 * 1024
# Every wait is bounded: a test that hangs is a failed test.
DEADLINE = 60.0
KILLED = threading.Event()
UPLOADS = {}
# The admin API's TLS when it requires an SVID: (CA, client cert, client key).
ADMIN_TLS = None


class Origin(http.server.BaseHTTPRequestHandler):
    """/stream?n=N[&pace=S]: N bytes, 64 KiB per write, S seconds between writes.
    /sse: an event every 20 ms (chunked) until the connection breaks.
    PUT /echo?id=X: reads a chunked body, noting when each piece arrived (UPLOADS[X])."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def query(self):
        _, _, q = self.path.partition("?")
        return dict(p.split("=", 1) for p in q.split("&") if "=" in p)

    def do_GET(self):
        path = self.path.partition("?")[0]
        q = self.query()
        self.close_connection = True
        try:
            if path == "/stream":
                n, pace = int(q["n"]), float(q.get("pace", "0"))
                self.send_response(200)
                self.send_header("content-type", "application/octet-stream")
                self.send_header("content-length", str(n))
                self.end_headers()
                block, sent = b"x" * CHUNK, 0
                while sent < n:
                    k = min(CHUNK, n - sent)
                    self.wfile.write(block[:k])
                    sent += k
                    if pace:
                        time.sleep(pace)
            elif path == "/sse":
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for i in range(int(DEADLINE / 0.02)):
                    data = f"data: {i}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                    time.sleep(0.02)
            else:
                self.send_error(404)
        except OSError:
            pass

    def do_PUT(self):
        arrivals = UPLOADS.setdefault(self.query().get("id", ""), [])
        self.close_connection = True
        try:
            while True:
                line = self.rfile.readline(100)
                if not line:
                    return
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline(100)
                    break
                left = size
                while left:
                    data = self.rfile.read1(min(left, CHUNK))
                    if not data:
                        return
                    arrivals.append((time.monotonic(), len(data)))
                    left -= len(data)
                self.rfile.readline(100)
            body = json.dumps({"received": sum(n for _, n in arrivals)}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (OSError, ValueError):
            pass


def start_origin(cert=None, key=None):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    server.daemon_threads = True
    if cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


class Flow:
    """What a client received on one flow, and when."""

    def __init__(self):
        self.events = []
        self.error = None
        self.done = False
        self.status = None
        self.version = None

    def received(self):
        return sum(n for _, n in self.events)

    def note(self, n):
        self.events.append((time.monotonic(), n))

    def summary(self, t_kill, expected=None):
        return {
            "status": self.status,
            "http_version": self.version,
            "bytes": self.received(),
            "bytes_before_kill": sum(n for t, n in self.events if t <= t_kill),
            "bytes_after_100ms": sum(n for t, n in self.events if t > t_kill + 0.1),
            "complete": self.done and (expected is None or self.received() == expected),
            "error": self.error,
        }


def httpx_read(client, url, task, flow, delay=0.0, until=None, chunk=16 * 1024):
    """Streams `url` with httpx; `delay` between reads until the kill (a slow reader), then
    reads as fast as it can (so what the client kernel buffered is counted at once)."""
    try:
        with client.stream("GET", url, headers={"x-agent-task": task}) as r:
            flow.status, flow.version = r.status_code, r.http_version
            for data in r.iter_raw(chunk):
                flow.note(len(data))
                if until and time.monotonic() > until[0]:
                    break
                if delay and not KILLED.is_set():
                    time.sleep(delay)
            flow.done = until is None
    except Exception as e:  # the cut, as the client reports it
        flow.error = f"{type(e).__name__}: {e}"


def wait_for(cond, what):
    end = time.monotonic() + DEADLINE
    while not cond():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)


def admin(admin_url, method, path, body=None):
    handlers = [urllib.request.ProxyHandler({})]
    if ADMIN_TLS:
        ctx = ssl.create_default_context(cafile=ADMIN_TLS[0])
        ctx.load_cert_chain(ADMIN_TLS[1], ADMIN_TLS[2])
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    opener = urllib.request.build_opener(*handlers)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(admin_url + path, data=data, method=method)
    with opener.open(req, timeout=10) as r:
        return json.load(r)


def kill(admin_url, end_task=False, spiffe_id=None):
    """Ends the victim's task (or kills the caller); returns when the answer came, and the
    answer."""
    if spiffe_id:
        answer = admin(admin_url, "POST", "/v1/kill", {"spiffe_id": spiffe_id})
    elif end_task:
        answer = admin(admin_url, "DELETE", "/v1/tasks/victim")
    else:
        answer = admin(admin_url, "POST", "/v1/kill", {"task": "victim", "reason": "runaway loop"})
    t = time.monotonic()
    KILLED.set()
    return t, answer


def join(threads):
    for t in threads:
        t.join(DEADLINE)
        if t.is_alive():
            raise SystemExit("a flow did not end in time")


def mode_http(proxy, admin_url, sse):
    port = start_origin()
    base = f"http://127.0.0.1:{port}"
    victim, bystander = Flow(), Flow()
    until = [float("inf")]
    if sse:
        # No chunk size: httpx then hands over each event as it arrives.
        args_v = (httpx.Client(proxy=proxy), f"{base}/sse", "victim", victim, 0.0, None, None)
        args_b = (httpx.Client(proxy=proxy), f"{base}/sse", "other", bystander, 0.0, until, None)
    else:
        # A slow reader (about 1.6 MB/s) of a 200 MB response; a bystander reading 4 MB.
        args_v = (httpx.Client(proxy=proxy), f"{base}/stream?n={200 * MB}", "victim", victim, 0.01)
        args_b = (httpx.Client(proxy=proxy), f"{base}/stream?n={4 * MB}", "other", bystander, 0.01)
    threads = [threading.Thread(target=httpx_read, args=a) for a in (args_v, args_b)]
    for t in threads:
        t.start()
    if sse:
        wait_for(lambda: len(victim.events) >= 5 and len(bystander.events) >= 5, "events")
    else:
        wait_for(lambda: victim.received() >= 2 * MB, "2 MB")
    t_kill, answer = kill(admin_url, end_task=sse)
    until[0] = t_kill + 1.0
    join(threads)
    return {
        "answer": answer,
        "victim": victim.summary(t_kill),
        "bystander": bystander.summary(t_kill, None if sse else 4 * MB),
        "bystander_events_after_kill": sum(1 for t, _ in bystander.events if t > t_kill),
    }


def mode_h2(proxy, admin_url, ca, cert, key):
    port = start_origin(cert, key)
    base = f"https://127.0.0.1:{port}"
    client = httpx.Client(http2=True, proxy=proxy, verify=ca)
    bystander, victims = Flow(), [Flow(), Flow()]
    # The bystander's stream opens the connection; the victims' streams join it.
    tb = threading.Thread(
        target=httpx_read,
        args=(client, f"{base}/stream?n={16 * MB}&pace=0.01", "other", bystander),
    )
    tb.start()
    wait_for(lambda: bystander.received() > 0, "the bystander's first bytes")
    tvs = [
        threading.Thread(
            target=httpx_read,
            args=(client, f"{base}/stream?n={200 * MB}&pace=0.01", "victim", v),
        )
        for v in victims
    ]
    for t in tvs:
        t.start()
    wait_for(lambda: all(v.received() >= MB for v in victims), "the victims' first MB")
    t_kill, answer = kill(admin_url)
    join([tb, *tvs])
    return {
        "answer": answer,
        "victims": [v.summary(t_kill) for v in victims],
        "bystander": bystander.summary(t_kill, 16 * MB),
    }


def mode_intercept(proxy, admin_url, ca, cert, key, spiffe_id):
    port = start_origin(cert, key)
    victim = Flow()
    client = httpx.Client(proxy=proxy, verify=ca)
    t = threading.Thread(
        target=httpx_read,
        args=(client, f"https://127.0.0.1:{port}/stream?n={200 * MB}", "victim", victim, 0.01),
    )
    t.start()
    wait_for(lambda: victim.received() >= 2 * MB, "2 MB")
    t_kill, answer = kill(admin_url, spiffe_id=spiffe_id)
    join([t])
    return {"answer": answer, "victim": victim.summary(t_kill)}


def curl_read(args, flow, out):
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while True:
        data = proc.stdout.read1(CHUNK)
        if not data:
            break
        flow.note(len(data))
    out["code"] = proc.wait(DEADLINE)
    out["stderr"] = proc.stderr.read().decode(errors="replace").strip()
    flow.done = out["code"] == 0
    if out["code"]:
        flow.error = f"curl exit {out['code']}: {out['stderr']}"


def mode_tunnel(proxy, admin_url):
    port = start_origin()
    victim, bystander = Flow(), Flow()
    results = [{}, {}]

    def curl(task, n):
        # -p: a CONNECT tunnel (localhost is `mode: tunnel` in the test policy).
        return ["curl", "-sS", "-p", "-x", proxy, "--proxy-header", f"X-Agent-Task: {task}",
                f"http://localhost:{port}/stream?n={n}&pace=0.01", "-o", "-"]

    threads = [
        threading.Thread(target=curl_read, args=(curl("victim", 200 * MB), victim, results[0])),
        threading.Thread(target=curl_read, args=(curl("other", 16 * MB), bystander, results[1])),
    ]
    for t in threads:
        t.start()
    wait_for(lambda: victim.received() >= MB and bystander.received() > 0, "the tunnels' bytes")
    t_kill, answer = kill(admin_url)
    join(threads)
    return {
        "answer": answer,
        "victim": victim.summary(t_kill),
        "bystander": bystander.summary(t_kill, 16 * MB + 0),
        "curl": results,
    }


def mode_upload(proxy, admin_url):
    port = start_origin()
    results = [{}, {}]

    def upload(task, total, out):
        args = ["curl", "-sS", "-x", proxy, "-T", "-", "-H", "Expect:",
                "-H", "X-Agent-Intent: files.write", "-H", f"X-Agent-Task: {task}",
                f"http://127.0.0.1:{port}/echo?id={task}"]
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        sent, block = 0, b"u" * CHUNK
        try:
            while sent < total and not (task == "victim" and out.get("stop")):
                proc.stdin.write(block)
                proc.stdin.flush()
                sent += CHUNK
                time.sleep(0.01)
        except OSError:
            pass
        try:
            proc.stdin.close()
        except OSError:
            pass
        out["sent"] = sent
        out["code"] = proc.wait(DEADLINE)
        out["stdout"] = proc.stdout.read().decode(errors="replace")
        out["stderr"] = proc.stderr.read().decode(errors="replace").strip()

    threads = [
        threading.Thread(target=upload, args=("victim", 200 * MB, results[0])),
        threading.Thread(target=upload, args=("other", 8 * MB, results[1])),
    ]
    for t in threads:
        t.start()
    received = lambda who: sum(n for _, n in UPLOADS.get(who, []))
    wait_for(lambda: received("victim") >= MB and received("other") > 0, "the uploads' bytes")
    t_kill, answer = kill(admin_url)
    # The client would go on writing for a second: none of it may reach the origin.
    time.sleep(1.0)
    results[0]["stop"] = True
    join(threads)

    def at_origin(who):
        arrivals = UPLOADS.get(who, [])
        return {
            "bytes": sum(n for _, n in arrivals),
            "bytes_before_kill": sum(n for t, n in arrivals if t <= t_kill),
            "bytes_after_100ms": sum(n for t, n in arrivals if t > t_kill + 0.1),
        }

    return {
        "answer": answer,
        "victim": {**at_origin("victim"), **results[0]},
        "bystander": {**at_origin("other"), **results[1]},
    }


def mode_callers(proxy, admin_url, proxy_ca, victim_cert, victim_key, victim_id,
                 bystander_cert, bystander_key):
    """Two callers, two SVIDs: the kill names the victim's SPIFFE ID only."""
    port = start_origin()
    victim, bystander = Flow(), Flow()
    results = [{}, {}]

    def curl(cert, key, n):
        return ["curl", "-sS", "--max-time", str(int(DEADLINE)), "-x", proxy,
                "--proxy-cacert", proxy_ca, "--proxy-cert", cert, "--proxy-key", key,
                f"http://127.0.0.1:{port}/stream?n={n}&pace=0.01", "-o", "-"]

    threads = [
        threading.Thread(target=curl_read,
                         args=(curl(victim_cert, victim_key, 200 * MB), victim, results[0])),
        threading.Thread(target=curl_read,
                         args=(curl(bystander_cert, bystander_key, 16 * MB), bystander,
                               results[1])),
    ]
    for t in threads:
        t.start()
    wait_for(lambda: victim.received() >= MB and bystander.received() >= MB, "both callers' MB")
    t_kill, answer = kill(admin_url, spiffe_id=victim_id)
    join(threads)
    return {
        "answer": answer,
        "victim": {**victim.summary(t_kill), **results[0]},
        "bystander": {**bystander.summary(t_kill, 16 * MB), **results[1]},
    }


def mode_transparent(admin_url, ca, spiffe_id, agent_uid):
    """Two redirected connections of the pod, plain HTTP and intercepted TLS, each reading a
    slow 200 MB response with curl as the agent; the kill names the pod's SPIFFE ID."""
    agent = [shutil.which("setpriv"), f"--reuid={agent_uid}", f"--regid={agent_uid}",
             "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
             shutil.which("curl"), "-sS", "--max-time", str(int(DEADLINE)), "-o", "-"]
    path = f"/public/stream?n={200 * MB}&pace=0.01"
    runs = {
        # One over IPv4, one over IPv6 (the pod's two transparent listeners).
        "http": agent + ["-4", f"http://api.test{path}"],
        "https": agent + ["-6", "--http2", "--cacert", ca, f"https://api.test{path}"],
    }
    flows = {name: Flow() for name in runs}
    results = {name: {} for name in runs}
    threads = [
        threading.Thread(target=curl_read, args=(args, flows[name], results[name]))
        for name, args in runs.items()
    ]
    for t in threads:
        t.start()
    wait_for(lambda: all(f.received() >= MB for f in flows.values()), "1 MB on each connection")
    t_kill, answer = kill(admin_url, spiffe_id=spiffe_id)
    join(threads)
    out = {name: {**flows[name].summary(t_kill), **results[name]} for name in runs}
    return {"answer": answer, **out}


def main():
    mode, proxy, admin_url = sys.argv[1:4]
    if mode in ("slow", "sse"):
        out = mode_http(proxy, admin_url, sse=mode == "sse")
    elif mode == "h2":
        out = mode_h2(proxy, admin_url, *sys.argv[4:7])
    elif mode == "intercept":
        out = mode_intercept(proxy, admin_url, *sys.argv[4:8])
    elif mode == "tunnel":
        out = mode_tunnel(proxy, admin_url)
    elif mode == "upload":
        out = mode_upload(proxy, admin_url)
    elif mode == "callers":
        out = mode_callers(proxy, admin_url, *sys.argv[4:10])
    elif mode == "transparent":
        global ADMIN_TLS
        ADMIN_TLS = tuple(sys.argv[7:10])
        out = mode_transparent(admin_url, *sys.argv[4:7])
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(out), flush=True)
    os._exit(0)  # origin threads may still be blocked in writes


if __name__ == "__main__":
    main()
