#!/usr/bin/env bash
# Loopback load comparison: the same small request, in one run, sent by wrk
#   1. direct to nginx,
#   2. through tollgate (forward proxy, bundled policy, decision log to a file),
#   2b. through tollgate injecting a static credential into every request (tollgate-cred:
#      the bundled policy with a `credential` on the loopback rule; the agent sends none),
#   2c. tollgate-nolog: tollgate (as 2, same policy) with the decision log off, so the log's
#      cost per request is tollgate's CPU µs/req minus tollgate-nolog's (printed with --pin),
#   2d. tollgate-glob: tollgate deciding with benches/load/policies/glob-regex (1,000 agents, a
#      glob.match on the host and a regex.match on the path per rule),
#   2e. tollgate-intercept: intercepted TLS keep-alive: examples/connect_load sends CONNECT to
#      tollgate's forward listener (interception on, the bundled policy), TLS to the leaf
#      tollgate mints (its CA made here with openssl), then keep-alive GETs; tollgate talks TLS
#      to an HTTPS nginx origin (its own openssl CA),
#   2f. tollgate-intercept-new: the same, but one request per new connection (CONNECT, two TLS
#      handshakes, the leaf cached after the first CONNECT to the origin, one GET, close): its
#      req/s are connections/s and its CPU µs/req is tollgate's CPU per new connection,
#   3. through Debian's squid (forward proxy, no caching),
#   4. through tinyproxy,
# and a table of requests/s, p50, p99 and ratios. Everything listens on 127.0.0.1, lives in a
# temp dir, is bounded in time and is stopped on exit. See docs/TESTING.md and
# docs/BENCHMARKS.md §13.
#
# wrk has no proxy support: for the proxies, a Lua script (benches/load/proxy.lua) sets the
# request target to the absolute-form URL http://127.0.0.1:ORIGIN/hello and wrk connects to the
# proxy's port. That is exactly what a forward proxy sees from a plain-HTTP client.
#
# Usage: benches/load.sh [options]
#   -d, --duration SECONDS    measured time per target (default 10)
#   -c, --connections N       wrk connections (default 64)
#   -t, --threads N           wrk threads (default 2)
#   -w, --warmup SECONDS      unmeasured warm-up per target (default 2; 0 to skip)
#   -b, --body-bytes N        size of the /hello body (default 100)
#   -l, --latency-duration S  measured time of the second pass, 1 connection (default 10; 0 skips)
#       --targets LIST        comma-separated subset of direct,tollgate,tollgate-cred,tollgate-nolog,
#                             tollgate-glob,tollgate-intercept,tollgate-intercept-new,squid,tinyproxy
#                             (default direct,tollgate,tollgate-cred,squid,tinyproxy; with --pin
#                             direct,tollgate,tollgate-nolog,tollgate-glob,tollgate-intercept,squid,
#                             tinyproxy)
#       --tollgate-bin PATH   use this tollgate binary; do not build
#       --client-bin PATH     use this connect_load (the tollgate-intercept* targets); do not build
#       --policy DIR          tollgate (plain) decides with the policy in DIR instead of the
#                             bundled one (benches/load/policies/: one-line, glob-regex); a
#                             make-data.py in DIR writes its data.json into the run's temp dir
#       --no-build            use target/release/tollgate and target/release/examples/connect_load
#                             as they are; do not build
#       --output FILE         also write the results as TSV to FILE
#       --pin                 pin each proxy (and nginx for direct) to CPU 0, nginx and wrk to CPU 1
#                             (taskset), and report the server's CPU µs per request
#                             (utime+stime from /proc/PID/stat over the measured run)
#       --keep                keep the temp dir (configs and logs) and print its path
#   -h, --help
# Needs: nginx wrk squid tinyproxy curl python3 (bash .ci/run installs them), openssl for the
# tollgate-intercept* targets, taskset for --pin; cargo to build.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=10
CONNECTIONS=64
THREADS=2
WARMUP=2
BODY_BYTES=100
LATENCY_DURATION=10
TARGETS=
ALL_TARGETS=direct,tollgate,tollgate-cred,tollgate-nolog,tollgate-glob,tollgate-intercept,tollgate-intercept-new,squid,tinyproxy
BENCH_TOKEN=bench-token-$RANDOM$RANDOM
TOLLGATE_BIN=
CLIENT_BIN=
GLOB_POLICY_DIR=$ROOT/benches/load/policies/glob-regex
POLICY_DIR=
BUILD=1
OUTPUT=
KEEP=0
START_TIMEOUT=30                        # seconds for any server to accept

PIN=0
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case $1 in
    -d|--duration) DURATION=$2; shift 2 ;;
    -c|--connections) CONNECTIONS=$2; shift 2 ;;
    -t|--threads) THREADS=$2; shift 2 ;;
    -w|--warmup) WARMUP=$2; shift 2 ;;
    -b|--body-bytes) BODY_BYTES=$2; shift 2 ;;
    -l|--latency-duration) LATENCY_DURATION=$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    --policy) POLICY_DIR=$2; shift 2 ;;
    --tollgate-bin) TOLLGATE_BIN=$2; BUILD=0; shift 2 ;;
    --client-bin) CLIENT_BIN=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --output) OUTPUT=$2; shift 2 ;;
    --pin) PIN=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "load.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for n in "$DURATION" "$CONNECTIONS" "$THREADS" "$WARMUP" "$BODY_BYTES"; do
  [[ $n =~ ^[0-9]+$ ]] || { echo "load.sh: expected a whole number, got '$n'" >&2; exit 2; }
done
(( BODY_BYTES >= 1 )) || { echo "load.sh: --body-bytes must be at least 1" >&2; exit 2; }
[[ $LATENCY_DURATION =~ ^[0-9]+$ ]] || { echo "load.sh: -l expects a whole number, got '$LATENCY_DURATION'" >&2; exit 2; }
if [[ -z $TARGETS ]]; then
  if (( PIN )); then
    TARGETS=direct,tollgate,tollgate-nolog,tollgate-glob,tollgate-intercept,squid,tinyproxy
  else
    TARGETS=direct,tollgate,tollgate-cred,squid,tinyproxy
  fi
fi
IFS=, read -r -a _asked <<<"$TARGETS"
for t in "${_asked[@]}"; do
  [[ ",$ALL_TARGETS," == *",$t,"* ]] || { echo "load.sh: unknown target '$t' (known: $ALL_TARGETS)" >&2; exit 2; }
done
want() { [[ ",$TARGETS," == *",$1,"* ]]; }
want_intercept() { want tollgate-intercept || want tollgate-intercept-new; }
want_tollgate() {
  local t
  for t in tollgate tollgate-cred tollgate-nolog tollgate-glob; do want "$t" && return 0; done
  want_intercept
}

log() { printf '[load] %s\n' "$*" >&2; }
die() { printf '[load] error: %s\n' "$*" >&2; exit 1; }

tool() {  # tool NAME: path, looking in the sbin folders too (nginx, squid live there)
  PATH="$PATH:/usr/sbin:/sbin:/usr/local/sbin" command -v "$1" \
    || die "$1 is not installed (bash .ci/run installs it, or: apt-get install nginx-light squid tinyproxy wrk)"
}
# shellcheck source=benches/common/nginx.sh
. "$ROOT/benches/common/nginx.sh"
# shellcheck source=benches/common/pki.sh
. "$ROOT/benches/common/pki.sh"
NGINX=$(tool nginx); WRK=$(tool wrk); CURL=$(tool curl); tool python3 >/dev/null
want squid && SQUID=$(tool squid)
want tinyproxy && TINYPROXY=$(tool tinyproxy)
want_intercept && OPENSSL=$(tool openssl)
(( PIN )) && tool taskset >/dev/null

# --- processes and cleanup ---------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-load.XXXXXX")
chmod 755 "$WORK"
# shellcheck source=benches/common/run.sh
. "$ROOT/benches/common/run.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

machine() {
  log "$1: nproc=$(nproc) uptime:$(uptime)"
}

# With --pin, the command prefixes that pin a process to CPU 0 (the proxies) or CPU 1 (nginx,
# wrk); taskset execs the command, so `$!` is the server's own PID.
ON_CPU0=()
ON_CPU1=()
if (( PIN )); then ON_CPU0=(taskset -c 0); ON_CPU1=(taskset -c 1); fi

# cpu_ticks PID: the process's user + system time so far, in clock ticks (/proc/PID/stat
# fields 14 and 15, counted after the command name, which may hold spaces).
cpu_ticks() {
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
CLK_TCK=$(getconf CLK_TCK)
declare -A SERVER_PID CPU_US

# --- origin: nginx ---------------------------------------------------------------------------
start_nginx() {
  local d=$WORK/nginx body tls_server=
  mkdir -p "$d/tmp"
  ORIGIN_PORT=$(free_port)
  # BODY_BYTES bytes: 'x' * (n-1) and a newline (nginx turns the two characters \n into one).
  body="$(printf '%*s' $((BODY_BYTES - 1)) '' | tr ' ' x)\\n"
  if want_intercept; then
    # The same /hello over TLS, for the tollgate-intercept* targets.
    ORIGIN_TLS_PORT=$(free_port)
    tls_server="
    server {
        listen 127.0.0.1:$ORIGIN_TLS_PORT ssl;
        ssl_certificate $WORK/pki/origin.pem;
        ssl_certificate_key $WORK/pki/origin-key.pem;
        location = /hello { default_type text/plain; return 200 \"$body\"; }
    }"
  fi
  nginx_conf "$d" notice "    server {
        listen 127.0.0.1:$ORIGIN_PORT;
        location = /hello { default_type text/plain; return 200 \"$body\"; }
        # tollgate-cred's sanity check: 200 only with the injected credential.
        location = /auth-check {
            if (\$http_authorization != \"Bearer $BENCH_TOKEN\") { return 401; }
            return 200 \"ok\";
        }
    }$tls_server" >"$d/nginx.conf"
  "${ON_CPU1[@]}" "$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/error.log" >"$d/stdout.log" 2>&1 &
  PIDS+=("$!")
  SERVER_PID[direct]=$!
  wait_port nginx "$ORIGIN_PORT" $! "$d/error.log"
  [[ -n ${ORIGIN_TLS_PORT:-} ]] && wait_port nginx "$ORIGIN_TLS_PORT" "${SERVER_PID[direct]}" "$d/error.log"
  ORIGIN_URL="http://127.0.0.1:$ORIGIN_PORT/hello"
  ORIGIN_TLS_URL="https://127.0.0.1:${ORIGIN_TLS_PORT:-}/hello"
  log "nginx origin on 127.0.0.1:$ORIGIN_PORT ($BODY_BYTES-byte /hello)"
}

# --- tollgate --------------------------------------------------------------------------------
build_tollgate() {
  if [[ -z $TOLLGATE_BIN ]]; then
    TOLLGATE_BIN=$ROOT/target/release/tollgate
    (( BUILD )) && release_build tollgate --bin tollgate
  fi
  [[ -x $TOLLGATE_BIN ]] || die "no tollgate binary at $TOLLGATE_BIN (drop --no-build, or pass --tollgate-bin)"
}

# The intercepted-TLS load client (wrk cannot send CONNECT): examples/connect_load.rs.
build_client() {
  if [[ -z $CLIENT_BIN ]]; then
    CLIENT_BIN=$ROOT/target/release/examples/connect_load
    (( BUILD )) && release_build connect_load --example connect_load
  fi
  [[ -x $CLIENT_BIN ]] || die "no connect_load at $CLIENT_BIN (cargo build --release --example connect_load, or pass --client-bin)"
}

# policy_from DIR D: copies the .rego files of DIR to D/policy (and runs DIR/make-data.py to
# write D/policy/data.json); prints the config's policy block.
policy_from() {
  local dir=$1 d=$2
  mkdir -p "$d/policy"
  cp "$dir"/*.rego "$d/policy/" || die "no .rego files in $dir"
  if [[ -f $dir/make-data.py ]]; then
    python3 "$dir/make-data.py" "$d/policy/data.json" || die "$dir/make-data.py failed"
  fi
  printf 'policy:\n  path: %s\n' "$d/policy"
}

# start_tollgate [VARIANT]: one tollgate process, pinned to CPU 0 with --pin.
#   plain      the bundled policy (or --policy DIR), decision log to a file   → target tollgate
#   cred       the bundled policy injecting a static credential               → tollgate-cred
#   nolog      as plain, with telemetry.decision_log: off                     → tollgate-nolog
#   glob       benches/load/policies/glob-regex, decision log to a file       → tollgate-glob
#   intercept  the bundled policy (loopback rule: intercept), the openssl interception CA and
#              the origin's CA as upstream.ca, decision log to a file → tollgate-intercept and
#              tollgate-intercept-new (one process for both)
# Sets TG_PORT[target] and SERVER_PID[target].
declare -A TG_PORT
start_tollgate() {
  local variant=${1:-plain} d extra= key decision_log upstream_ca=
  case $variant in
    plain) key=tollgate; d=$WORK/tollgate ;;
    *) key=tollgate-$variant; d=$WORK/tollgate-$variant ;;
  esac
  decision_log=$d/decisions.log
  [[ $variant == nolog ]] && decision_log=off
  mkdir -p "$d/state"
  if [[ $variant == cred ]]; then
    # The bundled policy and data, with the loopback rule asking for credential `bench`.
    printf '%s' "$BENCH_TOKEN" >"$d/token"
    python3 - "$ROOT/policy-wasm/data.json" "$d/data.json" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
agent = data["tollgate_config"]["agents"]["spiffe://tollgate.local/dev/agent"]
for rule in agent["rules"]:
    if rule.get("id") == "loopback":
        rule["credential"] = {"name": "bench", "scopes": [], "ttl": "1h"}
json.dump(data, open(sys.argv[2], "w"))
PY
    extra="policy:
  path: $ROOT/policy-wasm
  data: $d/data.json
credentials:
  bench:
    kind: static
    source: { file: $d/token }
    inject: { header: Authorization, value: \"Bearer {token}\" }"
  elif [[ $variant == glob ]]; then
    extra=$(policy_from "$GLOB_POLICY_DIR" "$d")
  elif [[ $variant == intercept ]]; then
    # The bundled policy: its loopback rule allows the dev caller on 127.0.0.1, any port, and
    # intercepts (a rule's mode defaults to intercept).
    extra=$(intercept_ca_yaml "$WORK/pki")
    upstream_ca=$WORK/pki/origin-ca.pem
  elif [[ -n $POLICY_DIR ]]; then
    extra=$(policy_from "$POLICY_DIR" "$d")
  fi
  tollgate_config "$decision_log" "$upstream_ca" "$extra" >"$d/config.yaml"
  TOLLGATE_STATE_DIR=$d/state "${ON_CPU0[@]}" "$TOLLGATE_BIN" run -c "$d/config.yaml" >"$d/stdout.log" 2>"$d/stderr.log" &
  local pid=$!
  PIDS+=("$pid")
  SERVER_PID[$key]=$pid
  [[ $variant == intercept ]] && SERVER_PID[tollgate-intercept-new]=$pid
  local port
  port=$(tollgate_port "$pid" "$d/stderr.log")
  wait_port "$key" "$port" "$pid" "$d/stderr.log"
  TG_PORT[$key]=$port
  [[ $variant == intercept ]] && TG_PORT[tollgate-intercept-new]=$port
  if [[ $variant == cred ]]; then
    # The credential really reaches the origin (and the agent sends none).
    local status
    status=$("$CURL" -s -o /dev/null -w '%{http_code}' --max-time 10 -x "http://127.0.0.1:$port" \
      "http://127.0.0.1:$ORIGIN_PORT/auth-check" || true)
    [[ $status == 200 ]] || die "tollgate-cred: the origin did not receive the injected credential (HTTP $status)"
  fi
  log "$key, decision log $decision_log ($("$TOLLGATE_BIN" version 2>/dev/null | head -n1 || echo '?')) on 127.0.0.1:$port"
}

# --- squid -----------------------------------------------------------------------------------
start_squid() {
  local d=$WORK/squid
  mkdir -p "$d"
  chmod 777 "$d"   # as root squid runs as cache_effective_user (proxy) and writes its logs here
  SQUID_PORT=$(free_port)
  cat >"$d/squid.conf" <<EOF
http_port 127.0.0.1:$SQUID_PORT
pid_filename $d/squid.pid
cache_log $d/cache.log
access_log stdio:$d/access.log
cache_store_log none
cache deny all
cache_mem 0 MB
coredump_dir $d
netdb_filename none
pinger_enable off
dns_nameservers 127.0.0.1
http_access allow localhost
http_access deny all
shutdown_lifetime 0 seconds
max_filedescriptors 8192
$( [[ $(id -u) == 0 ]] && echo 'cache_effective_user proxy' )
EOF
  "${ON_CPU0[@]}" "$SQUID" -N -f "$d/squid.conf" >"$d/stdout.log" 2>&1 &
  PIDS+=("$!")
  SERVER_PID[squid]=$!
  wait_port squid "$SQUID_PORT" $! "$d/cache.log"
  log "squid ($("$SQUID" -v | head -n1)) on 127.0.0.1:$SQUID_PORT"
}

# --- tinyproxy -------------------------------------------------------------------------------
start_tinyproxy() {
  local d=$WORK/tinyproxy
  mkdir -p "$d"
  TINYPROXY_PORT=$(free_port)
  cat >"$d/tinyproxy.conf" <<EOF
Port $TINYPROXY_PORT
Listen 127.0.0.1
Timeout 600
MaxClients 1024
Allow 127.0.0.1
LogLevel Connect
LogFile "$d/tinyproxy.log"
PidFile "$d/tinyproxy.pid"
EOF
  "${ON_CPU0[@]}" "$TINYPROXY" -d -c "$d/tinyproxy.conf" >"$d/stdout.log" 2>&1 &
  PIDS+=("$!")
  SERVER_PID[tinyproxy]=$!
  wait_port tinyproxy "$TINYPROXY_PORT" $! "$d/tinyproxy.log"
  log "tinyproxy ($("$TINYPROXY" -v 2>&1 | head -n1)) on 127.0.0.1:$TINYPROXY_PORT"
}

# --- measuring -------------------------------------------------------------------------------
# to_ms VALUE: wrk latency ("812.00us", "1.23ms", "1.01s", "2.00m") in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}

declare -A RPS P50 P99 NON2XX SOCKERR
# measure TARGET PORT [CONNECTIONS THREADS DURATION KEY]: sanity request, warm-up, then the
# measured wrk run; results stored under KEY (default: TARGET).
measure() {
  local target=$1 port=$2 conns=${3:-$CONNECTIONS} threads=${4:-$THREADS} duration=${5:-$DURATION}
  local key=${6:-$1}
  local out=$WORK/wrk-$key.txt script=() status
  # wrk on CPU 1 with --pin.
  local WRK_CMD=("${ON_CPU1[@]}" "$WRK")
  if [[ $target != direct ]]; then
    # Absolute-form target and the origin's Host, sent to the proxy's port.
    sed -e "s|@URL@|$ORIGIN_URL|" -e "s|@HOST@|127.0.0.1:$ORIGIN_PORT|" \
      "$ROOT/benches/load/proxy.lua" >"$WORK/proxy-$target.lua"
    script=(-s "$WORK/proxy-$target.lua")
    status=$("$CURL" -s -o "$WORK/check-$target.body" -w '%{http_code}' --max-time 10 \
      -x "http://127.0.0.1:$port" "$ORIGIN_URL" || true)
  else
    status=$("$CURL" -s -o "$WORK/check-$target.body" -w '%{http_code}' --max-time 10 "$ORIGIN_URL" || true)
  fi
  if [[ $status != 200 ]] || (( $(wc -c <"$WORK/check-$target.body") != BODY_BYTES )); then
    log "$target: a single request got HTTP $status, not 200 with the $BODY_BYTES-byte body; skipped. Body:"
    head -c 600 "$WORK/check-$target.body" >&2 || true; echo >&2
    RPS[$key]=FAILED
    return 0
  fi
  if (( WARMUP > 0 )); then
    run_fg timeout $((WARMUP + 30)) "${WRK_CMD[@]}" -t"$threads" -c"$conns" -d"${WARMUP}s" "${script[@]}" \
      "http://127.0.0.1:$port/hello" >/dev/null || die "wrk warm-up against $target failed"
  fi
  log "$target: wrk -t$threads -c$conns -d${duration}s --latency"
  local server=${SERVER_PID[$target]:-} ticks0=0
  [[ -n $server ]] && ticks0=$(cpu_ticks "$server")
  run_fg timeout $((duration + 60)) "${WRK_CMD[@]}" -t"$threads" -c"$conns" -d"${duration}s" --latency --timeout 5s \
    "${script[@]}" "http://127.0.0.1:$port/hello" >"$out" || die "wrk against $target failed: $(cat "$out")"
  if [[ -n $server ]]; then
    local ticks1 requests
    ticks1=$(cpu_ticks "$server")
    requests=$(awk '/ requests in / {print $1}' "$out")
    CPU_US[$key]=$(awk -v t=$((ticks1 - ticks0)) -v hz="$CLK_TCK" -v n="$requests" \
      'BEGIN { if (n > 0) printf "%.1f", t * 1000000 / hz / n; else print "-" }')
  fi
  sed 's/^/    /' "$out" >&2
  RPS[$key]=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  P50[$key]=$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")
  P99[$key]=$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")
  # Responses that were not 2xx/3xx (a 403 from a policy would show here), and socket errors
  # (connect, read, write, timeout; a proxy that closes the connection after each response
  # without saying so, like tinyproxy, shows one read error per request).
  NON2XX[$key]=$(awk '/Non-2xx or 3xx responses:/ {e += $NF} END {print e + 0}' "$out")
  SOCKERR[$key]=$(awk '/Socket errors:/ {gsub(/,/, ""); e += $4 + $6 + $8 + $10} END {print e + 0}' "$out")
}

# measure_client TARGET PORT [CONNECTIONS DURATION KEY]: the tollgate-intercept* targets, with
# examples/connect_load (on CPU 1 with --pin) through tollgate's forward listener at PORT:
# a sanity request (curl through the proxy, verifying the leaf against the interception CA,
# which also mints and caches the leaf), warm-up, then the measured run; results under KEY.
# tollgate-intercept-new opens a new connection per request (--new-connections).
measure_client() {
  local target=$1 port=$2 conns=${3:-$CONNECTIONS} duration=${4:-$DURATION} key=${5:-$1}
  local out=$WORK/client-$key.txt status line requests mode=()
  local client=("${ON_CPU1[@]}" "$CLIENT_BIN" --url "$ORIGIN_TLS_URL" --cacert "$WORK/pki/intercept-ca.pem"
    --proxy "127.0.0.1:$port" -c "$conns")
  [[ $target == tollgate-intercept-new ]] && mode=(--new-connections)
  status=$("$CURL" -s -o "$WORK/check-$target.body" -w '%{http_code}' --max-time 10 \
    --cacert "$WORK/pki/intercept-ca.pem" -x "http://127.0.0.1:$port" "$ORIGIN_TLS_URL" || true)
  if [[ $status != 200 ]] || (( $(wc -c <"$WORK/check-$target.body") != BODY_BYTES )); then
    log "$target: a single intercepted request got HTTP $status, not 200 with the $BODY_BYTES-byte body; skipped. Body:"
    head -c 600 "$WORK/check-$target.body" >&2 || true; echo >&2
    RPS[$key]=FAILED
    return 0
  fi
  if (( WARMUP > 0 )); then
    run_fg timeout $((WARMUP + 30)) "${client[@]}" -d "$WARMUP" "${mode[@]}" >/dev/null \
      || die "connect_load warm-up against $target failed"
  fi
  log "$target: connect_load -c$conns -d${duration} ${mode[*]}"
  local server=${SERVER_PID[$target]} ticks0 ticks1
  ticks0=$(cpu_ticks "$server")
  run_fg timeout $((duration + 60)) "${client[@]}" -d "$duration" "${mode[@]}" >"$out" \
    || die "connect_load against $target failed: $(cat "$out")"
  ticks1=$(cpu_ticks "$server")
  line=$(tail -n1 "$out")
  sed 's/^/    /' "$out" >&2
  requests=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$line")
  [[ $requests =~ ^[0-9]+$ ]] && (( requests > 0 )) || die "$target: connect_load completed no request: $line"
  CPU_US[$key]=$(awk -v t=$((ticks1 - ticks0)) -v hz="$CLK_TCK" -v n="$requests" \
    'BEGIN { printf "%.1f", t * 1000000 / hz / n }')
  RPS[$key]=$(sed -n 's/.*rps=\([0-9.]*\).*/\1/p' <<<"$line")
  P50[$key]=$(sed -n 's/.*p50_ms=\([0-9.]*\).*/\1/p' <<<"$line")
  P99[$key]=$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' <<<"$line")
  # connect_load counts a non-200 answer and a failed connection alike, as one error each.
  NON2XX[$key]=-
  SOCKERR[$key]=$(sed -n 's/.*errors=\([0-9]*\).*/\1/p' <<<"$line")
}

# measure_any TARGET CONNECTIONS THREADS DURATION KEY: wrk, or connect_load for the
# tollgate-intercept* targets, against TARGET's port.
measure_any() {
  local target=$1
  case $target in
    direct) measure direct "$ORIGIN_PORT" "${@:2}" ;;
    squid) measure squid "$SQUID_PORT" "${@:2}" ;;
    tinyproxy) measure tinyproxy "$TINYPROXY_PORT" "${@:2}" ;;
    tollgate-intercept|tollgate-intercept-new) measure_client "$target" "${TG_PORT[$target]}" "$2" "$4" "$5" ;;
    *) measure "$target" "${TG_PORT[$target]}" "${@:2}" ;;
  esac
}

ratio() {  # ratio A B: A/B with 2 decimals, "-" when either is missing
  local a=${1:-} b=${2:-}
  [[ $a =~ ^[0-9.]+$ && $b =~ ^[0-9.]+$ ]] || { echo "-"; return; }
  awk -v a="$a" -v b="$b" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'
}

# --- run ------------------------------------------------------------------------------------
want_tollgate && build_tollgate
want_intercept && { build_client; bench_pki "$WORK/pki" "$OPENSSL" || die "openssl failed: $(cat "$WORK/pki/openssl.log")"; }
start_nginx
want tollgate && start_tollgate
want tollgate-cred && start_tollgate cred
want tollgate-nolog && start_tollgate nolog
want tollgate-glob && start_tollgate glob
want_intercept && start_tollgate intercept
want squid && start_squid
want tinyproxy && start_tinyproxy

ORDER=()
IFS=, read -r -a _all <<<"$ALL_TARGETS"
for t in "${_all[@]}"; do want "$t" && ORDER+=("$t"); done
machine before
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for t in "${ORDER[@]}"; do
  measure_any "$t" "$CONNECTIONS" "$THREADS" "$DURATION" "$t"
done
if (( LATENCY_DURATION > 0 )); then
  for t in "${ORDER[@]}"; do
    [[ ${RPS[$t]} == FAILED ]] && continue
    measure_any "$t" 1 1 "$LATENCY_DURATION" "$t@1"
  done
fi
machine after
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

{
  echo
  echo "Loopback load: wrk $THREADS threads, $CONNECTIONS connections, ${DURATION}s per target (warm-up ${WARMUP}s),"
  echo "GET of a $BODY_BYTES-byte body from nginx; $(nproc) CPUs shared by wrk, the proxy and nginx."
  (( PIN )) && echo "Pinned: each proxy on CPU 0, nginx, wrk and connect_load on CPU 1; CPU µs/req is the server's utime+stime over the measured run ÷ requests (nginx's for direct)."
  echo "Load average (1, 5, 15 min): $LOAD_BEFORE before, $LOAD_AFTER after."
  printf '%-22s %11s %9s %9s %9s %9s %10s %9s %8s %8s %10s\n' \
    target 'req/s' 'p50 ms' 'p99 ms' 'vs direct' 'vs squid' 'vs tinyprx' '+p50 ms' non-2xx 'sock err' 'CPU µs/req'
  for t in "${ORDER[@]}"; do
    if [[ ${RPS[$t]} == FAILED ]]; then
      printf '%-22s %12s\n' "$t" FAILED
      continue
    fi
    added=$(awk -v a="${P50[$t]}" -v b="${P50[direct]:-}" 'BEGIN { if (b == "") print "-"; else printf "%+.3f", a - b }')
    printf '%-22s %11s %9s %9s %9s %9s %10s %9s %8s %8s %10s\n' "$t" "${RPS[$t]}" "${P50[$t]}" "${P99[$t]}" \
      "$(ratio "${RPS[$t]}" "${RPS[direct]:-}")" "$(ratio "${RPS[$t]}" "${RPS[squid]:-}")" \
      "$(ratio "${RPS[$t]}" "${RPS[tinyproxy]:-}")" "$added" "${NON2XX[$t]}" "${SOCKERR[$t]}" "${CPU_US[$t]:--}"
  done
  echo "(ratios are requests/s of the row over the column's target; +p50 is the row's p50 minus direct's)"
  if want_intercept; then
    echo "(tollgate-intercept*: connect_load, not wrk, over intercepted TLS; direct is plain HTTP; sock err counts"
    echo " connect_load's errors, failed connections and non-200 answers alike)"
  fi
  if want tollgate-intercept-new && [[ ${RPS[tollgate-intercept-new]} != FAILED ]]; then
    echo "(tollgate-intercept-new: one request per new connection: req/s are new connections/s, p50/p99 a whole"
    echo " connection's time, CPU µs/req tollgate's CPU per new connection: ${CPU_US[tollgate-intercept-new]:--} µs)"
  fi
  if (( PIN )) && [[ ${CPU_US[tollgate]:-} =~ ^[0-9.]+$ && ${CPU_US[tollgate-nolog]:-} =~ ^[0-9.]+$ ]]; then
    echo "Decision log's cost: tollgate − tollgate-nolog = ${CPU_US[tollgate]} − ${CPU_US[tollgate-nolog]} =" \
      "$(awk -v a="${CPU_US[tollgate]}" -v b="${CPU_US[tollgate-nolog]}" 'BEGIN { printf "%+.1f", a - b }') CPU µs/req"
  fi
  if (( LATENCY_DURATION > 0 )); then
    echo
    echo "Latency without queueing: wrk 1 thread, 1 connection, ${LATENCY_DURATION}s per target."
    printf '%-22s %11s %9s %9s %9s %10s\n' target 'req/s' 'p50 ms' 'p99 ms' '+p50 ms' 'CPU µs/req'
    for t in "${ORDER[@]}"; do
      k="$t@1"
      if [[ ${RPS[$k]:-FAILED} == FAILED ]]; then
        printf '%-22s %12s\n' "$t" FAILED
        continue
      fi
      added=$(awk -v a="${P50[$k]}" -v b="${P50[direct@1]:-}" 'BEGIN { if (b == "") print "-"; else printf "%+.3f", a - b }')
      printf '%-22s %11s %9s %9s %9s %10s\n' "$t" "${RPS[$k]}" "${P50[$k]}" "${P99[$k]}" "$added" "${CPU_US[$k]:--}"
    done
  fi
}

if [[ -n $OUTPUT ]]; then
  {
    printf 'target\trps\tp50_ms\tp99_ms\tnon_2xx\tsocket_errors\tcpu_us_per_req\n'
    for t in "${ORDER[@]}"; do
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "${RPS[$t]}" "${P50[$t]:-}" "${P99[$t]:-}" "${NON2XX[$t]:-}" \
        "${SOCKERR[$t]:-}" "${CPU_US[$t]:-}"
    done
  } >"$OUTPUT"
  log "results written to $OUTPUT"
fi
failed=0
for t in "${ORDER[@]}"; do [[ ${RPS[$t]} == FAILED ]] && failed=1; done
exit $failed
