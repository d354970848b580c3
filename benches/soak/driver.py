#!/usr/bin/env python3
"""The soak's load, events and sampler (benches/soak.sh runs it; docs/TESTING.md, "Soak").

Subcommands:
  data REV OUT        write the soak's policy data (revision number REV) to OUT, atomically
  run SETTINGS.json   drive the load and the events until the deadline, sampling every
                      `sample_every` seconds; writes into the work folder:
                        samples.csv         one row per sample (RSS, FDs, threads, errors…)
                        events.jsonl        reloads, kills, lifts, rotations with their times
                        client-KIND.jsonl   one line per request a client sent
                        secrets/            every secret value used (kept out of the grep)

Clients (real ones, each at a bounded rate so the machine is not saturated):
  cred        httpx, plain HTTP through the forward listener to /cred: tollgate injects the
              static credential `soak`, the origin answers which generation it received
  denied      httpx, plain HTTP to /denied: 403 from the policy (path_not_allowed)
  tls_h1      httpx, HTTPS through CONNECT, intercepted, HTTP/1.1 inside
  tls_h2      httpx with h2, HTTPS through CONNECT, intercepted, HTTP/2 inside
  victim      curl over the mTLS listener with the victim's X.509-SVID: its SPIFFE ID is the
              one the kill switch kills and lifts
(wrk sends the plain-forward part; benches/soak/plain.lua.)

Every allowed request reaches the origin with `x-soak-rev: N` set by the policy from its data
(revision number N), and the origin echoes it: that is how a response names the revision that
decided it. Times are Unix seconds (time.time()), the clock the decision log uses too.
"""

import json
import os
import secrets
import ssl
import subprocess
import sys
import threading
import time

# Every secret value in use so far (bytes; appended by the rotation, read by the clients, which
# search every response's head and body for each: the responses themselves are not kept).
SECRETS = []

AGENT = "spiffe://tollgate.local/soak/agent"
VICTIM = "spiffe://tollgate.local/soak/victim"


def write_atomic(path, data):
    """Writes by temp file + rename, so tollgate never reads a half-written file."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def policy_data(rev):
    """The bundled policy's data for the soak: the agent may GET /ok and /cred (the latter with
    credential `soak`), anything else is denied; the victim may GET /ok. Every allow sets
    `x-soak-rev` to this revision number."""
    headers = {"set": {"x-soak-rev": str(rev)}, "remove": []}
    loop = ["127.0.0.1"]
    return {
        "tollgate_config": {
            "agents": {
                AGENT: {
                    "description": f"soak agent, data revision {rev}",
                    "rules": [
                        {
                            "id": "soak-cred",
                            "hosts": loop,
                            "ports": ["*"],
                            "methods": ["GET"],
                            "paths": ["/cred"],
                            "credential": {"name": "soak", "scopes": [], "ttl": "1h"},
                            "headers": headers,
                        },
                        {
                            "id": "soak-ok",
                            "hosts": loop,
                            "ports": ["*"],
                            "methods": ["GET"],
                            "paths": ["/ok"],
                            "headers": headers,
                        },
                    ],
                },
                VICTIM: {
                    "description": f"soak victim, data revision {rev}",
                    "rules": [
                        {
                            "id": "victim-ok",
                            "hosts": loop,
                            "ports": ["*"],
                            "methods": ["GET"],
                            "paths": ["/ok"],
                            "headers": headers,
                        }
                    ],
                },
            }
        }
    }


class Recorder:
    """One JSON line per request, per client kind; counts transport errors."""

    def __init__(self, work, kind):
        self.f = open(os.path.join(work, f"client-{kind}.jsonl"), "w", buffering=1 << 16)
        self.lock = threading.Lock()
        self.errors = 0
        self.sent = 0

    def add(self, rec):
        with self.lock:
            self.sent += 1
            if rec.get("e"):
                self.errors += 1
            self.f.write(json.dumps(rec, separators=(",", ":")) + "\n")

    def close(self):
        with self.lock:
            self.f.close()


def leaks(*parts):
    """True when any secret value appears in any of the byte strings."""
    return any(v in p for v in list(SECRETS) for p in parts)


def reason_of(body):
    try:
        return json.loads(body).get("reason")
    except (ValueError, AttributeError):
        return None


def httpx_worker(s, kind, rec, stop, rate):
    import httpx

    proxy = f"http://127.0.0.1:{s['plain_port']}"
    if kind in ("tls_h1", "tls_h2"):
        ctx = ssl.create_default_context(cafile=s["intercept_ca"])
        client = httpx.Client(proxy=proxy, verify=ctx, http2=(kind == "tls_h2"), timeout=20)
        url = f"https://127.0.0.1:{s['origin_tls_port']}/ok"
    else:
        client = httpx.Client(proxy=proxy, timeout=20)
        path = "/cred" if kind == "cred" else "/denied"
        url = f"http://127.0.0.1:{s['origin_port']}{path}"
    paced(stop, rate, lambda: rec.add(one_httpx(client, kind, url)))
    client.close()


def one_httpx(client, kind, url):
    t0 = time.time()
    r = {"k": kind, "t0": t0}
    try:
        resp = client.get(url)
        body = resp.content
        r.update(
            t1=time.time(),
            s=resp.status_code,
            v=resp.http_version,
            id=resp.headers.get("x-tollgate-decision-id"),
            rev=resp.headers.get("x-soak-rev"),
            gen=resp.headers.get("x-soak-cred-gen"),
        )
        if resp.status_code >= 400:
            r["r"] = reason_of(body)
        head = "\n".join(f"{k}: {v}" for k, v in resp.headers.multi_items()).encode()
        if leaks(head, body):
            r["leak"] = True
    except Exception as exc:  # a transport error is a finding, recorded, not fatal
        r.update(t1=time.time(), e=type(exc).__name__ + ": " + str(exc)[:200])
    return r


def victim_worker(s, rec, stop, rate):
    url = f"http://127.0.0.1:{s['origin_port']}/ok"
    marker = "\n@@soak@@"
    cmd = [
        "curl", "-sS", "--max-time", "20", "-x", f"https://127.0.0.1:{s['mtls_port']}",
        "--proxy-cacert", s["listener_ca"], "--proxy-cert", s["victim_cert"],
        "--proxy-key", s["victim_key"], "-D", "-",
        "-w", marker + "%{http_code}", url,
    ]

    def one():
        t0 = time.time()
        r = {"k": "victim", "t0": t0}
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            r.update(t1=time.time(), e="curl timed out")
            rec.add(r)
            return
        r["t1"] = time.time()
        if leaks(p.stdout, p.stderr):
            r["leak"] = True
        out = p.stdout.decode("utf-8", "replace")
        head, _, code = out.rpartition(marker)
        if p.returncode != 0 or not code.isdigit():
            r["e"] = f"curl exit {p.returncode}: {p.stderr.decode('utf-8', 'replace')[:200]}"
        else:
            r["s"] = int(code)
            hdrs, _, body = head.partition("\r\n\r\n")
            for line in hdrs.split("\r\n"):
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "x-tollgate-decision-id":
                    r["id"] = value.strip()
                elif name == "x-soak-rev":
                    r["rev"] = value.strip()
            if r["s"] >= 400:
                r["r"] = reason_of(body)
        rec.add(r)

    paced(stop, rate, one)


def paced(stop, rate, fn):
    """Calls fn about `rate` times a second until stop is set (never faster; a slow call just
    lowers the rate)."""
    period = 1.0 / rate
    nxt = time.monotonic()
    while not stop.is_set():
        fn()
        nxt += period
        delay = nxt - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        else:
            nxt = time.monotonic()


class Admin:
    """The admin API over loopback HTTP/1.1 (httpx, no proxy)."""

    def __init__(self, port):
        import httpx

        self.c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False)

    def call(self, method, path, body=None):
        resp = self.c.request(method, path, json=body)
        try:
            return resp.status_code, resp.json()
        except ValueError:
            return resp.status_code, {"raw": resp.text[:300]}

    def metrics(self):
        return self.c.get("/metrics").text


def metric_sum(text, name, match=None):
    """Sum of a metric's samples whose label text contains every string in `match`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest[:1] not in ("{", " "):
            continue
        if match and not all(m in rest for m in match):
            continue
        try:
            total += float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            pass
    return total


def policy_revision(text):
    for line in text.splitlines():
        if line.startswith("tollgate_policy_info{"):
            for part in line.split("{", 1)[1].split("}", 1)[0].split(","):
                k, _, v = part.partition("=")
                if k == "revision":
                    return v.strip('"')
    return None


def proc_sample(pid):
    rss = threads = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds, threads


def sample_row(admin, pid, elapsed, recs):
    """One samples.csv row: the process's RSS, FDs and threads, and counts from /metrics."""
    m = admin.metrics()
    rss, fds, nthreads = proc_sample(pid)
    return ",".join(str(x) for x in [
        round(elapsed, 3), rss, fds, nthreads,
        int(metric_sum(m, "tollgate_active_connections")),
        int(metric_sum(m, "tollgate_requests_total")),
        int(metric_sum(m, "tollgate_requests_total", ['decision="deny"'])),
        int(metric_sum(m, "tollgate_requests_total", ['decision="error"'])),
        sum(r.errors for r in recs.values()),
        int(metric_sum(m, "tollgate_decision_log_dropped_total")),
        int(metric_sum(m, "tollgate_kills_active")),
    ]) + "\n"


def run(settings_path):
    with open(settings_path) as f:
        s = json.load(f)
    work = s["work"]
    duration = float(s["duration"])
    pid = int(s["pid"])
    admin = Admin(s["admin_port"])
    os.makedirs(os.path.join(work, "secrets"), exist_ok=True)
    for name in os.listdir(os.path.join(work, "secrets")):
        with open(os.path.join(work, "secrets", name), "rb") as f:
            SECRETS.append(f.read().strip())
    events = open(os.path.join(work, "events.jsonl"), "w", buffering=1)

    def event(ev):
        events.write(json.dumps(ev, separators=(",", ":")) + "\n")

    rev0 = policy_revision(admin.metrics())
    event({"ev": "start", "t": time.time(), "rev": 0, "revision": rev0, "warmup": s.get("warmup", 0)})

    stop = threading.Event()
    recs = {}
    threads = []
    rates = s["rates"]
    for kind in ("cred", "denied", "tls_h1", "tls_h2"):
        recs[kind] = Recorder(work, kind)
        t = threading.Thread(target=httpx_worker, args=(s, kind, recs[kind], stop, rates[kind]))
        threads.append(t)
    recs["victim"] = Recorder(work, "victim")
    threads.append(threading.Thread(target=victim_worker, args=(s, recs["victim"], stop, rates["victim"])))
    for t in threads:
        t.start()

    samples = open(os.path.join(work, "samples.csv"), "w", buffering=1)
    samples.write(
        "t_s,rss_kb,fds,threads,active_connections,requests_total,denied_total,"
        "error_decisions_total,client_errors,decision_log_dropped,kills_active\n"
    )
    # Warm-up: the load runs and the policy is reloaded every second (each reload briefly holds
    # two engine generations; the allocator's high-water mark from that is part of warming
    # up), nothing is sampled; the run's clock (t = 0) starts after it.
    rev = 0
    warm_end = time.time() + float(s.get("warmup", 0))
    while time.time() + 1 <= warm_end:
        stop.wait(1)
        rev += 1
        write_atomic(s["data_path"], json.dumps(policy_data(rev)).encode())
        t_sent = time.time()
        status, body = admin.call("POST", "/v1/reload")
        event({"ev": "reload", "rev": rev, "t_sent": t_sent, "t_done": time.time(), "status": status,
               "revision": body.get("revision"), "result": body.get("result"), "warmup": True})
    stop.wait(max(0.0, warm_end - time.time()))
    start = time.time()
    event({"ev": "measure", "t": start})
    gen, kill_id = s["first_gen"], None
    n_reload = n_kill = n_rotate = n_sample = 0
    every = s["every"]
    deadline = start + duration
    while True:
        now = time.time()
        el = now - start
        if now >= deadline:
            break
        if el >= (n_sample * every["sample"]):
            n_sample += 1
            samples.write(sample_row(admin, pid, el, recs))
        if el >= (n_reload + 1) * every["reload"]:
            n_reload += 1
            rev += 1
            write_atomic(s["data_path"], json.dumps(policy_data(rev)).encode())
            t_sent = time.time()
            status, body = admin.call("POST", "/v1/reload")
            event({"ev": "reload", "rev": rev, "t_sent": t_sent, "t_done": time.time(),
                   "status": status, "revision": body.get("revision"), "result": body.get("result")})
        if el >= (n_kill + 1) * every["kill"]:
            n_kill += 1
            t_sent = time.time()
            if kill_id is None:
                status, body = admin.call("POST", "/v1/kill", {"spiffe_id": VICTIM, "reason": "soak"})
                kill_id = (body.get("kill") or {}).get("id")
                event({"ev": "kill", "t_sent": t_sent, "t_done": time.time(), "status": status, "id": kill_id})
            else:
                status, body = admin.call("DELETE", f"/v1/kill/{kill_id}")
                event({"ev": "lift", "t_sent": t_sent, "t_done": time.time(), "status": status, "id": kill_id})
                kill_id = None
        if el >= (n_rotate + 1) * every["rotate"]:
            n_rotate += 1
            gen += 1
            value = f"sk-soak-g{gen}-{secrets.token_hex(16)}"
            with open(os.path.join(work, "secrets", f"g{gen}"), "w") as f:
                f.write(value)
            SECRETS.append(value.encode())
            t_sent = time.time()
            write_atomic(s["secret_path"], value.encode())
            event({"ev": "rotate", "gen": gen, "t_sent": t_sent, "t_done": time.time()})
        # Wake for the next due action (at most 1 s later: bounded, never a busy loop).
        nxt = min(
            start + n_sample * every["sample"],
            start + (n_reload + 1) * every["reload"],
            start + (n_kill + 1) * every["kill"],
            start + (n_rotate + 1) * every["rotate"],
            deadline,
        )
        time.sleep(min(1.0, max(0.0, nxt - time.time())))
    stop.set()
    for t in threads:
        t.join(timeout=60)
    alive = [t.name for t in threads if t.is_alive()]
    for r in recs.values():
        r.close()
    samples.write(sample_row(admin, pid, time.time() - start, recs))
    samples.close()
    event({"ev": "end", "t": time.time(), "sent": {k: r.sent for k, r in recs.items()},
           "stuck_threads": alive})
    events.close()
    return 1 if alive else 0


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "data":
        write_atomic(sys.argv[3], json.dumps(policy_data(int(sys.argv[2]))).encode())
        return 0
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        return run(sys.argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
