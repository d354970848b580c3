#!/usr/bin/env bash
# Soak: N minutes of mixed load through one tollgate, with a policy reload every minute, the
# kill switch toggled every 2 minutes and the credential's secret rotated every 5; samples RSS,
# open FDs, threads and error counts every 10 s into samples.csv, then checks (exit 1 on any
# failure; docs/TESTING.md, "Soak"):
#   1. RSS and FDs flat after warm-up: the median of the last third of the run's samples within
#      5 % of the median of its second sixth (minutes 20–30 against 5–10 for 30 minutes);
#   2. 0 requests answered by a stale policy revision after its reload was answered (every
#      allowed response echoes the data's revision number; every decision-log line names the
#      revision that decided);
#   3. 0 requests of the killed SPIFFE ID answered otherwise than 403 `killed` after the kill
#      was answered (and none still refused after the lift was answered);
#   4. 0 lost decision-log lines (every decision id a client received is in the log; the sent
#      and written totals are printed);
#   5. 0 secret bytes in any output (every file of the run is searched for every secret value);
#   6. no transport error and no unexpected status on any client, tollgate alive to the end.
#
# Load (real clients, each paced; about 190 requests/s in all): wrk (plain forward, 2
# connections × 1 request per 20 ms), Python httpx (credential-injected plain HTTP, denied,
# intercepted HTTPS over HTTP/1.1, intercepted HTTPS over HTTP/2), curl with an X.509-SVID
# over the mTLS listener (the victim the kill switch kills). Origin: nginx (HTTP and HTTPS
# with h2). All on 127.0.0.1, in a temp folder, stopped on exit.
#
# Shorter runs scale every window and interval by MINUTES/30 (floors: reload 2 s, kill
# toggle 4 s, rotation 10 s): a 2-minute run reloads every 4 s, kills or lifts every 8 s and
# rotates every 20 s.
#
# Usage: benches/soak.sh [options]
#   -d, --minutes N         duration in minutes (default 30)
#       --seconds N         duration in seconds instead (quick trials; windows scale the same)
#       --warmup SECONDS    load without events or samples before the run's clock starts
#                           (default 0: the 30-minute run's warm-up is its first 5 minutes)
#       --tollgate-bin PATH use this binary; do not build
#       --no-build          use target/release/tollgate as it is
#       --out DIR           keep the run's files (samples.csv, summary.json, logs) in DIR
#   -h, --help
# Needs: nginx wrk curl openssl python3 with httpx and h2 (scripts/install-test-deps).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS_TOTAL=1800
WARMUP=0
TOLLGATE_BIN=
BUILD=1
OUT=
START_TIMEOUT=60
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case $1 in
    -d|--minutes) [[ $2 =~ ^[0-9]+$ ]] || { echo "soak.sh: --minutes wants a whole number" >&2; exit 2; }
                  SECONDS_TOTAL=$(( $2 * 60 )); shift 2 ;;
    --seconds) [[ $2 =~ ^[0-9]+$ ]] || { echo "soak.sh: --seconds wants a whole number" >&2; exit 2; }
               SECONDS_TOTAL=$2; shift 2 ;;
    --warmup) [[ $2 =~ ^[0-9]+$ ]] || { echo "soak.sh: --warmup wants a whole number" >&2; exit 2; }
              WARMUP=$2; shift 2 ;;
    --tollgate-bin) TOLLGATE_BIN=$2; BUILD=0; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "soak.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
(( SECONDS_TOTAL >= 60 )) || { echo "soak.sh: the run must last at least 60 s" >&2; exit 2; }

log() { printf '[soak] %s\n' "$*" >&2; }
die() { printf '[soak] error: %s\n' "$*" >&2; exit 1; }
tool() {
  PATH="$PATH:/usr/sbin:/sbin:/usr/local/sbin" command -v "$1" || die "$1 is not installed (scripts/install-test-deps)"
}
PY=${TOLLGATE_TEST_PYTHON:-python3}
# shellcheck source=benches/common/nginx.sh
. "$ROOT/benches/common/nginx.sh"
NGINX=$(tool nginx); WRK=$(tool wrk); tool curl >/dev/null; tool openssl >/dev/null
"$PY" -c 'import httpx, h2' 2>/dev/null || die "python3 needs httpx and h2 (scripts/install-test-deps)"

# --- intervals (seconds), scaled for short runs --------------------------------------------
scaled() {  # scaled BASE FLOOR: BASE * SECONDS_TOTAL / 1800, at least FLOOR
  local v=$(( $1 * SECONDS_TOTAL / 1800 ))
  (( v < $2 )) && v=$2
  echo "$v"
}
# SOAK_RELOAD_EVERY, SOAK_KILL_EVERY, SOAK_ROTATE_EVERY (seconds) override them, to tell one
# event's effect from another's (a value past the run's end turns that event off).
RELOAD_EVERY=${SOAK_RELOAD_EVERY:-$(scaled 60 2)}
KILL_EVERY=${SOAK_KILL_EVERY:-$(scaled 120 4)}
ROTATE_EVERY=${SOAK_ROTATE_EVERY:-$(scaled 300 10)}
for v in "$RELOAD_EVERY" "$KILL_EVERY" "$ROTATE_EVERY"; do
  [[ $v =~ ^[0-9]+$ ]] && (( v > 0 )) || { echo "soak.sh: an interval must be a whole number of seconds > 0, got '$v'" >&2; exit 2; }
done
# Every 10 s; runs shorter than 10 minutes every 2 s, so that each compared window holds at
# least 10 samples (a 2-minute run's windows are 20 s and 40 s long).
SAMPLE_EVERY=10
(( SECONDS_TOTAL < 600 )) && SAMPLE_EVERY=2

# --- processes and cleanup -------------------------------------------------------------------
if [[ -n $OUT ]]; then mkdir -p "$OUT"; WORK=$(cd "$OUT" && pwd); else WORK=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-soak.XXXXXX"); fi
chmod 755 "$WORK"
PIDS=()
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  set +e
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  [[ -z $OUT ]] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {  # wait_port NAME PORT PID LOG
  local deadline=$((SECONDS + START_TIMEOUT))
  until (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; do
    kill -0 "$3" 2>/dev/null || { tail -n 30 "$4" >&2; die "$1 exited before 127.0.0.1:$2 accepted"; }
    (( SECONDS < deadline )) || { tail -n 30 "$4" >&2; die "$1: 127.0.0.1:$2 not accepting after ${START_TIMEOUT}s"; }
    sleep 0.05
  done
}

# --- binary ----------------------------------------------------------------------------------
if [[ -z $TOLLGATE_BIN ]]; then
  TOLLGATE_BIN=$ROOT/target/release/tollgate
  if (( BUILD )); then
    log "building tollgate (release)"
    cargo build --manifest-path "$ROOT/Cargo.toml" --release --locked --bin tollgate >&2 \
      || die "cargo build --release failed"
  fi
fi
[[ -x $TOLLGATE_BIN ]] || die "no tollgate binary at $TOLLGATE_BIN"

# --- PKI: trust domain + victim SVID + interception CA (tollgate certs), origin CA (openssl) --
P=$WORK/pki
mkdir -p "$P"
"$TOLLGATE_BIN" certs init --dir "$P" --trust-domain tollgate.local >/dev/null
"$TOLLGATE_BIN" certs issue --dir "$P" --spiffe-id spiffe://tollgate.local/soak/victim \
  --name victim --ttl "$(( SECONDS_TOTAL / 60 + 60 ))m" >/dev/null
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=tollgate soak origin CA" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout "$P/ca-key.pem" -out "$P/ca.pem" 2>/dev/null
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$P/leaf.ext"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$P/leaf-key.pem" -out "$P/leaf.csr" 2>/dev/null
openssl x509 -req -in "$P/leaf.csr" -CA "$P/ca.pem" -CAkey "$P/ca-key.pem" -CAcreateserial \
  -days 2 -sha256 -extfile "$P/leaf.ext" -out "$P/leaf.pem" 2>/dev/null

# --- origin: nginx, HTTP and HTTPS (h2) --------------------------------------------------------
# /ok echoes the revision the policy set (x-soak-rev); /cred answers 200 only with a soak
# credential and echoes its generation number (never the secret itself).
ORIGIN_PORT=$(free_port)
ORIGIN_TLS_PORT=$(free_port)
N=$WORK/nginx
mkdir -p "$N/tmp"
LOCATIONS='
        location = /ok {
            add_header x-soak-rev $http_x_soak_rev always;
            return 200 "ok\n";
        }
        location = /cred {
            set $gen "";
            if ($http_authorization ~ "^Bearer sk-soak-g([0-9]+)-[0-9a-f]{32}$") { set $gen $1; }
            if ($gen = "") { return 401 "no soak credential\n"; }
            add_header x-soak-rev $http_x_soak_rev always;
            add_header x-soak-cred-gen $gen always;
            return 200 "credential received\n";
        }
        location / { return 404 "not here\n"; }'
nginx_conf "$N" warn "    default_type text/plain;
    server {
        listen 127.0.0.1:$ORIGIN_PORT;
$LOCATIONS
    }
    server {
        listen 127.0.0.1:$ORIGIN_TLS_PORT ssl http2;
        ssl_certificate $P/leaf.pem;
        ssl_certificate_key $P/leaf-key.pem;
$LOCATIONS
    }" >"$N/nginx.conf"
"$NGINX" -p "$N" -c "$N/nginx.conf" -e "$N/error.log" >"$N/stdout.log" 2>&1 &
PIDS+=("$!")
wait_port nginx "$ORIGIN_PORT" $! "$N/error.log"
wait_port nginx "$ORIGIN_TLS_PORT" $! "$N/error.log"

# --- tollgate --------------------------------------------------------------------------------
T=$WORK/tollgate
mkdir -p "$T/state" "$WORK/secrets"
"$PY" "$ROOT/benches/soak/driver.py" data 0 "$T/data.json"
SECRET="sk-soak-g1-$(openssl rand -hex 16)"
printf '%s' "$SECRET" >"$WORK/secrets/g1"
printf '%s' "$SECRET" >"$T/secret"
unset SECRET
cat >"$T/config.yaml" <<EOF
listeners:
  - name: plain
    address: 127.0.0.1:0
    mode: forward
  - name: mtls
    address: 127.0.0.1:0
    mode: forward
    tls: {cert: $P/leaf.pem, key: $P/leaf-key.pem, client_auth: required}
admin:
  address: 127.0.0.1:0
  kill_file: $T/kills.json
identity:
  workload_spiffe_id: spiffe://tollgate.local/soak/agent
  trust_domains:
    tollgate.local: {bundle: $P/tollgate.local.bundle.pem}
intercept_ca: {cert: $P/intercept-ca.pem, key: $P/intercept-ca-key.pem}
policy:
  path: $ROOT/policy-wasm
  data: $T/data.json
credentials:
  soak:
    kind: static
    source: {file: $T/secret}
upstream:
  ca: $P/ca.pem
  allow_private: ["127.0.0.0/8"]
telemetry:
  decision_log: $T/decisions.jsonl
  log_format: json
EOF
TOLLGATE_STATE_DIR=$T/state "$TOLLGATE_BIN" run -c "$T/config.yaml" >"$T/stdout.log" 2>"$T/stderr.log" &
TG_PID=$!
PIDS+=("$TG_PID")
deadline=$((SECONDS + START_TIMEOUT))
PLAIN_PORT= MTLS_PORT= ADMIN_PORT=
until [[ -n $PLAIN_PORT && -n $MTLS_PORT && -n $ADMIN_PORT ]]; do
  kill -0 "$TG_PID" 2>/dev/null || { tail -n 30 "$T/stderr.log" >&2; die "tollgate exited before it was ready"; }
  (( SECONDS < deadline )) || { tail -n 30 "$T/stderr.log" >&2; die "tollgate not ready after ${START_TIMEOUT}s"; }
  sleep 0.05
  PLAIN_PORT=$(grep '"message":"listener ready"' "$T/stderr.log" | grep '"listener":"plain"' \
    | sed -nE 's/.*"address":"127\.0\.0\.1:([0-9]+)".*/\1/p' | head -n1 || true)
  MTLS_PORT=$(grep '"message":"listener ready"' "$T/stderr.log" | grep '"listener":"mtls"' \
    | sed -nE 's/.*"address":"127\.0\.0\.1:([0-9]+)".*/\1/p' | head -n1 || true)
  ADMIN_PORT=$(grep '"message":"admin ready"' "$T/stderr.log" \
    | sed -nE 's/.*"address":"127\.0\.0\.1:([0-9]+)".*/\1/p' | head -n1 || true)
done
wait_port tollgate "$PLAIN_PORT" "$TG_PID" "$T/stderr.log"
log "tollgate $TG_PID: plain 127.0.0.1:$PLAIN_PORT, mtls 127.0.0.1:$MTLS_PORT, admin 127.0.0.1:$ADMIN_PORT"
log "origin: http 127.0.0.1:$ORIGIN_PORT, https 127.0.0.1:$ORIGIN_TLS_PORT; work dir $WORK"
log "warm-up ${WARMUP}s, then ${SECONDS_TOTAL}s; reload every ${RELOAD_EVERY}s, kill toggled every ${KILL_EVERY}s, secret rotated every ${ROTATE_EVERY}s, sample every ${SAMPLE_EVERY}s"

# --- load --------------------------------------------------------------------------------------
sed -e "s|@URL@|http://127.0.0.1:$ORIGIN_PORT/ok|" -e "s|@HOST@|127.0.0.1:$ORIGIN_PORT|" \
  -e "s|@DELAY_MS@|20|" -e "s|@OUT@|$WORK/client-plain.txt|" \
  "$ROOT/benches/soak/plain.lua" >"$WORK/plain.lua"
timeout $((WARMUP + SECONDS_TOTAL + 60)) "$WRK" -t1 -c2 -d"$((WARMUP + SECONDS_TOTAL))s" --timeout 20s -s "$WORK/plain.lua" \
  "http://127.0.0.1:$PLAIN_PORT/ok" >"$WORK/wrk.txt" 2>&1 &
WRK_PID=$!
PIDS+=("$WRK_PID")

cat >"$WORK/settings.json" <<EOF
{"work": "$WORK", "duration": $SECONDS_TOTAL, "warmup": $WARMUP, "pid": $TG_PID, "admin_port": $ADMIN_PORT,
 "plain_port": $PLAIN_PORT, "mtls_port": $MTLS_PORT, "origin_port": $ORIGIN_PORT,
 "origin_tls_port": $ORIGIN_TLS_PORT, "intercept_ca": "$P/intercept-ca.pem",
 "listener_ca": "$P/ca.pem", "victim_cert": "$P/victim.pem", "victim_key": "$P/victim-key.pem",
 "data_path": "$T/data.json", "secret_path": "$T/secret", "first_gen": 1,
 "rates": {"cred": 20, "denied": 15, "tls_h1": 25, "tls_h2": 25, "victim": 4},
 "every": {"sample": $SAMPLE_EVERY, "reload": $RELOAD_EVERY, "kill": $KILL_EVERY, "rotate": $ROTATE_EVERY}}
EOF
DRIVER_RC=0
timeout $((WARMUP + SECONDS_TOTAL + 180)) "$PY" "$ROOT/benches/soak/driver.py" run "$WORK/settings.json" \
  >"$WORK/driver.log" 2>&1 || DRIVER_RC=$?
WRK_RC=0
for _ in $(seq 600); do kill -0 "$WRK_PID" 2>/dev/null || break; sleep 0.1; done
wait "$WRK_PID" || WRK_RC=$?
ALIVE=1
kill -0 "$TG_PID" 2>/dev/null || ALIVE=0
# The final scrape, once tollgate's decision count has settled (two scrapes 0.5 s apart agree;
# at most 20 tries): a request the clients abandoned at the stop may still be finishing.
prev=
for _ in $(seq 20); do
  curl -s --max-time 10 "http://127.0.0.1:$ADMIN_PORT/metrics" >"$WORK/metrics-end.txt" || true
  now=$(grep -E '^tollgate_requests_total[{ ]' "$WORK/metrics-end.txt" | awk '{s += $NF} END {print s + 0}')
  [[ -n $prev && $now == "$prev" ]] && break
  prev=$now
  sleep 0.5
done

# Stop tollgate (SIGTERM drains and flushes the decision log), then check.
TG_RC=0
if (( ALIVE )); then
  kill -TERM "$TG_PID"
  for _ in $(seq 600); do kill -0 "$TG_PID" 2>/dev/null || break; sleep 0.1; done
  wait "$TG_PID" || TG_RC=$?
else
  wait "$TG_PID" || TG_RC=$?
fi
log "driver exit $DRIVER_RC, wrk exit $WRK_RC, tollgate alive at the end: $ALIVE (exit $TG_RC after SIGTERM)"
[[ -s $WORK/driver.log ]] && sed 's/^/[driver] /' "$WORK/driver.log" >&2
"$PY" "$ROOT/benches/soak/check.py" "$WORK" --driver-rc "$DRIVER_RC" --wrk-rc "$WRK_RC" \
  --alive "$ALIVE" --tollgate-rc "$TG_RC" || { log "FAIL after ${SECONDS}s wall"; exit 1; }
log "pass after ${SECONDS}s wall"
