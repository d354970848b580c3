#!/usr/bin/env python3
"""The soak's pass criteria (benches/soak.sh runs it after the load; docs/TESTING.md, "Soak").

  check.py WORK --driver-rc N --wrk-rc N --alive 0|1 --tollgate-rc N

Reads what benches/soak.sh and driver.py left in WORK, prints one line per criterion and a
verdict, writes WORK/summary.json, and exits 0 only when every criterion holds:

  flat        median RSS and median FD count of the samples in the last third of the run
              within 5 % of those in its second sixth (for 30 minutes: minutes 20-30 against
              5-10); the median, so that the one sample in six taken while a reload holds two
              policy engines does not decide (the means are reported too). For FDs at least
              2 descriptors are allowed (5 % of ~40 is less than the connections that come
              and go)
  revision    0 requests answered by a revision older than the newest reload answered before
              the request was sent: by the origin's echo of x-soak-rev (clients) and by the
              decision log's policy_revision (every line, wrk's included)
  kill        0 requests of the killed SPIFFE ID sent after the kill was answered and before
              its lift was sent that were not 403 `killed` (clients and decision log); 0 sent
              after the lift was answered still refused `killed`
  lost_lines  0 decision ids received by a client that are missing from the decision log;
              0 lines dropped (tollgate_decision_log_dropped_total); lines written equal to
              the decisions tollgate counted (tollgate_requests_total, scraped after the load)
  secrets     0 occurrences of any secret value in any file of the run (secrets/ and the
              secret file tollgate reads excepted) and in any response's head and body (the
              clients search each one as it arrives; wrk's plain responses excepted)
  clients     0 transport errors and 0 unexpected statuses on every client (a victim request
              in flight while a kill is engaged may be cut by it: counted apart); tollgate
              alive to the end and exited 0 on SIGTERM; the driver and wrk exited 0
"""

import argparse
import bisect
import csv
import datetime
import json
import os
import statistics
import sys

VICTIM = "spiffe://tollgate.local/soak/victim"
# Per client kind: the status every response must have (victim: depends on the kill state).
EXPECTED = {"plain": 200, "cred": 200, "denied": 403, "tls_h1": 200, "tls_h2": 200}
# The 5 %; SOAK_RSS_TOLERANCE loosens the RSS part only (tests/soak.rs: a 2-minute run
# measures the allocator settling after start-up, not a trend — docs/TESTING.md "Soak").
TOLERANCE = 0.05
RSS_TOLERANCE = float(os.environ.get("SOAK_RSS_TOLERANCE", TOLERANCE))
FD_SLACK = 2


def load_jsonl(path):
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def parse_time(s):
    # "2026-12-03T09:54:25.363Z" (UTC, milliseconds)
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def flatness(samples, duration):
    """Windows scaled from the issue's 30-minute ones: base [D/6, D/3], final [2D/3, D]."""
    base = [r for r in samples if duration / 6 <= r["t_s"] <= duration / 3]
    final = [r for r in samples if 2 * duration / 3 <= r["t_s"] < duration]
    res = {"base_window_s": [round(duration / 6, 1), round(duration / 3, 1)],
           "final_window_s": [round(2 * duration / 3, 1), round(duration, 1)],
           "base_samples": len(base), "final_samples": len(final)}
    ok = bool(base) and bool(final)
    for key in ("rss_kb", "fds", "threads"):
        if not base or not final:
            continue
        b = statistics.median(r[key] for r in base)
        f = statistics.median(r[key] for r in final)
        change = (f - b) / b if b else 0.0
        res[key] = {"base_median": b, "final_median": f, "change_pct": round(100 * change, 3),
                    "base_mean": round(statistics.fmean(r[key] for r in base), 2),
                    "final_mean": round(statistics.fmean(r[key] for r in final), 2),
                    "base_max": max(r[key] for r in base), "final_max": max(r[key] for r in final),
                    "min": min(r[key] for r in samples), "max": max(r[key] for r in samples)}
        # FDs: 5 %, but never less than FD_SLACK descriptors (at ~40 open FDs 5 % is 2, and
        # the victim's one-connection-per-request curl alone makes one come and go).
        allowed = RSS_TOLERANCE * b if key == "rss_kb" else max(TOLERANCE * b, FD_SLACK)
        res[key]["allowed_change"] = allowed if key != "threads" else None
        if key in ("rss_kb", "fds") and abs(f - b) > allowed:
            ok = False
    return ok, res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--driver-rc", type=int, default=0)
    ap.add_argument("--wrk-rc", type=int, default=0)
    ap.add_argument("--alive", type=int, default=1)
    ap.add_argument("--tollgate-rc", type=int, default=0)
    a = ap.parse_args()
    w = a.work
    settings = json.load(open(os.path.join(w, "settings.json")))
    duration = float(settings["duration"])
    failures = []
    summary = {"duration_s": duration}

    # --- samples: flatness ---
    samples = []
    with open(os.path.join(w, "samples.csv")) as f:
        for row in csv.DictReader(f):
            samples.append({k: float(v) for k, v in row.items()})
    ok, flat = flatness(samples, duration)
    summary["flat"] = flat
    summary["samples"] = len(samples)
    if not ok:
        failures.append("flat: RSS or FDs moved more than 5 % between the windows (or a window is empty)")

    # --- events ---
    events = load_jsonl(os.path.join(w, "events.jsonl"))
    start = next((e for e in events if e["ev"] == "start"), None)
    reloads = [e for e in events if e["ev"] == "reload"]
    kills = [e for e in events if e["ev"] in ("kill", "lift")]
    rotations = [e for e in events if e["ev"] == "rotate"]
    summary["events"] = {"reloads": len(reloads),
                         "warmup_reloads": sum(1 for e in reloads if e.get("warmup")), "kills": sum(e["ev"] == "kill" for e in kills),
                         "lifts": sum(e["ev"] == "lift" for e in kills), "rotations": len(rotations)}
    bad_events = [e for e in reloads if e["status"] != 200 or e.get("result") != "success"]
    bad_events += [e for e in kills if e["status"] not in (200, 201)]
    if bad_events:
        failures.append(f"events: {len(bad_events)} admin calls failed, first {bad_events[0]}")
    rev_of = {}
    if start and start.get("revision"):
        rev_of[start["revision"]] = 0
    for e in reloads:
        if e.get("revision"):
            rev_of[e["revision"]] = e["rev"]
    summary["distinct_revisions"] = len(rev_of)
    if len(rev_of) != len(reloads) + 1:
        failures.append(f"revision: {len(reloads)} reloads gave {len(rev_of)} distinct revisions "
                        "(a data change must change the revision)")
    done_times = [e["t_done"] for e in reloads]

    def required_rev(t):
        """The newest revision whose reload was answered before t."""
        i = bisect.bisect_left(done_times, t)
        return reloads[i - 1]["rev"] if i > 0 else 0

    # The victim's state over time: "killed" between a kill's answer and its lift's sending,
    # "lifted" between a lift's answer (or the start) and the next kill's sending; anything
    # else is a transition, where either answer is right.
    spans = []
    t_prev, state = float("-inf"), "lifted"
    for e in kills:
        spans.append((t_prev, e["t_sent"], state))
        t_prev, state = e["t_done"], ("killed" if e["ev"] == "kill" else "lifted")
    spans.append((t_prev, float("inf"), state))

    def kill_state(t0, t1=None):
        """The state if [t0, t1] lies wholly inside one span, else None."""
        t1 = t0 if t1 is None else t1
        for lo, hi, st in spans:
            if lo < t0 and t1 < hi:
                return st
        return None

    # --- clients ---
    records = []
    for kind in ("cred", "denied", "tls_h1", "tls_h2", "victim"):
        for r in load_jsonl(os.path.join(w, f"client-{kind}.jsonl")):
            records.append(r)
    plain = []
    if os.path.exists(os.path.join(w, "client-plain.txt")):
        with open(os.path.join(w, "client-plain.txt")) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    plain.append({"k": "plain", "s": int(parts[0]),
                                  "id": None if parts[1] == "-" else parts[1],
                                  "rev": None if parts[2] == "-" else parts[2]})
    sent = {}
    for r in records + plain:
        sent[r["k"]] = sent.get(r["k"], 0) + 1
    summary["responses_or_errors_per_client"] = sent
    # A victim request in flight while a kill is engaged may be cut (the kill ends the caller's
    # open flows with a reset): expected, counted apart. Every other transport error fails.
    kill_windows = [(e["t_sent"], e["t_done"]) for e in kills if e["ev"] == "kill"]
    cut_by_kill = [r for r in records if r.get("e") and r["k"] == "victim"
                   and any(r["t0"] < hi and r["t1"] > lo for lo, hi in kill_windows)]
    transport = [r for r in records if r.get("e") and r not in cut_by_kill]
    unexpected = []
    stale_clients = []
    kill_violations = []
    lift_violations = []
    h2_not_h2 = 0
    for r in records + plain:
        if r.get("e"):
            continue
        k = r["k"]
        if k == "victim":
            st = kill_state(r["t0"], r["t1"])
            if st == "killed" and not (r["s"] == 403 and r.get("r") == "killed"):
                kill_violations.append(r)
            elif st == "lifted" and r["s"] != 200:
                lift_violations.append(r)
        elif r["s"] != EXPECTED[k]:
            unexpected.append(r)
        if k == "tls_h2" and r.get("v") != "HTTP/2":
            h2_not_h2 += 1
        if r.get("rev") is not None and "t0" in r and int(r["rev"]) < required_rev(r["t0"]):
            stale_clients.append(r)
    # wrk: no send time per request, but the order of one connection's responses is the order
    # of its requests; its lines are checked against the decision log below.
    summary["client_transport_errors"] = len(transport)
    summary["victim_requests_cut_by_a_kill"] = len(cut_by_kill)
    summary["client_unexpected_status"] = len(unexpected)
    summary["h2_responses_not_http2"] = h2_not_h2
    if transport:
        failures.append(f"clients: {len(transport)} transport errors, first {transport[0]}")
    if unexpected:
        failures.append(f"clients: {len(unexpected)} unexpected statuses, first {unexpected[0]}")
    if h2_not_h2:
        failures.append(f"clients: {h2_not_h2} tls_h2 responses were not HTTP/2")

    # --- decision log ---
    lines = load_jsonl(os.path.join(w, "tollgate", "decisions.jsonl"))
    ids = set()
    stale_log = []
    kill_log = []
    unknown_rev = 0
    by_method = {}
    for d in lines:
        ids.add(d["decision_id"])
        m = d["request"]["method"]
        by_method[m] = by_method.get(m, 0) + 1
        t = parse_time(d["time"])
        rv = d.get("policy_revision")
        if rv is not None:
            if rv not in rev_of:
                unknown_rev += 1
            elif rev_of[rv] < required_rev(t):
                stale_log.append(d)
        if (d.get("source") or {}).get("spiffe_id") == VICTIM and kill_state(t) == "killed" \
                and d["decision"]["reason"] != "killed":
            kill_log.append(d)
    summary["decision_log_lines"] = len(lines)
    summary["decision_log_lines_by_method"] = by_method
    summary["stale_revision"] = {"clients": len(stale_clients), "decision_log": len(stale_log),
                                 "unknown_revision_lines": unknown_rev}
    if stale_clients or stale_log or unknown_rev:
        failures.append(f"revision: {len(stale_clients)} stale responses, {len(stale_log)} stale "
                        f"log lines, {unknown_rev} lines with an unknown revision")
    summary["killed"] = {"clients": len(kill_violations), "decision_log": len(kill_log),
                         "refused_after_lift": len(lift_violations),
                         "victim_403_killed": sum(1 for r in records if r["k"] == "victim"
                                                  and r.get("r") == "killed")}
    if kill_violations or kill_log or lift_violations:
        failures.append(f"kill: {len(kill_violations)} answered after the kill, {len(kill_log)} "
                        f"such log lines, {len(lift_violations)} refused after the lift")

    received = [r["id"] for r in records + plain if r.get("id")]
    missing = [i for i in received if i not in ids]
    no_id = [r for r in records + plain if not r.get("e") and not r.get("id")]
    dropped = 0
    decisions_counted = None
    mpath = os.path.join(w, "metrics-end.txt")
    if os.path.exists(mpath):
        decisions_counted = 0
        for line in open(mpath):
            if line.startswith("tollgate_decision_log_dropped_total"):
                dropped += int(float(line.split()[-1]))
            elif line.startswith("tollgate_requests_total{") or line.startswith("tollgate_requests_total "):
                decisions_counted += int(float(line.split()[-1]))
    requests_answered = len(records) - len(transport) - len(cut_by_kill) + len(plain)
    summary["lost_lines"] = {"responses": requests_answered, "decision_ids_received": len(received),
                             "missing_from_log": len(missing), "responses_without_id": len(no_id),
                             "lines_not_connect": len(lines) - by_method.get("CONNECT", 0),
                             "dropped_metric": dropped,
                             "decisions_counted_metric": decisions_counted,
                             "lines_written": len(lines)}
    if missing or no_id or dropped or decisions_counted != len(lines):
        failures.append(f"lost_lines: {len(missing)} ids missing from the log, {len(no_id)} "
                        f"responses without an id, {dropped} dropped, {decisions_counted} "
                        f"decisions counted (tollgate_requests_total) vs {len(lines)} lines")

    # --- credential rotation (informational unless a response shows a retired generation
    #     more than 2 s after its replacement was written: the file is polled every 500 ms) ---
    gen_done = [(e["t_done"], e["gen"]) for e in rotations]
    stale_gen = 0
    for r in records:
        if r["k"] == "cred" and r.get("gen"):
            want = settings["first_gen"]
            for t, g in gen_done:
                if t + 2.0 < r["t0"]:
                    want = g
            if int(r["gen"]) < want:
                stale_gen += 1
    summary["credential_stale_generation"] = stale_gen
    summary["credential_generations_seen"] = sorted({int(r["gen"]) for r in records
                                                     if r.get("gen")})
    if stale_gen:
        failures.append(f"credential: {stale_gen} responses carried a rotated-out secret > 2 s after the rotation")

    # --- secrets ---
    secret_values = []
    sdir = os.path.join(w, "secrets")
    for name in sorted(os.listdir(sdir)):
        secret_values.append(open(os.path.join(sdir, name), "rb").read().strip())
    skip = {os.path.realpath(sdir), os.path.realpath(os.path.join(w, "tollgate", "secret"))}
    hits = []
    scanned = 0
    for dirpath, dirnames, filenames in os.walk(w):
        if os.path.realpath(dirpath) in skip:
            dirnames[:] = []
            continue
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            if os.path.realpath(p) in skip or not os.path.isfile(p):
                continue
            scanned += 1
            data = open(p, "rb").read()
            for v in secret_values:
                if v and v in data:
                    hits.append(p)
    in_responses = sum(1 for r in records if r.get("leak"))
    summary["secrets"] = {"values": len(secret_values), "files_scanned": scanned, "hits": hits,
                          "responses_scanned": len(records) - len(transport) - len(cut_by_kill),
                          "responses_with_a_secret": in_responses}
    if hits or in_responses:
        failures.append(f"secrets: a secret value appears in {sorted(set(hits))} and in "
                        f"{in_responses} responses")

    # --- processes ---
    summary["processes"] = {"driver_rc": a.driver_rc, "wrk_rc": a.wrk_rc, "tollgate_alive": a.alive,
                            "tollgate_rc": a.tollgate_rc}
    if a.driver_rc or a.wrk_rc or not a.alive or a.tollgate_rc:
        failures.append(f"processes: {summary['processes']}")
    wrk_txt = os.path.join(w, "wrk.txt")
    if os.path.exists(wrk_txt):
        summary["wrk"] = [line.strip() for line in open(wrk_txt) if line.strip()][-6:]

    summary["failures"] = failures
    summary["pass"] = not failures
    with open(os.path.join(w, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))
    print("SOAK PASS" if not failures else "SOAK FAIL:\n  " + "\n  ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
