#!/usr/bin/env bash
# Loopback load comparison: the same small request, in one run, sent by wrk
#   1. direct to nginx,
#   2. through tollgate (forward proxy, bundled policy, decision log to a file),
#   2b. through tollgate injecting a static credential into every request (tollgate-cred:
#      the bundled policy with a `credential` on the loopback rule; the agent sends none),
#   3. through Debian's squid (forward proxy, no caching),
#   4. through tinyproxy,
# and a table of requests/s, p50, p99 and ratios. Everything listens on 127.0.0.1, lives in a
# temp dir, is bounded in time and is stopped on exit. See docs/TESTING.md.
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
#       --targets LIST        comma-separated subset of direct,tollgate,tollgate-cred,squid,tinyproxy
#       --tollgate-bin PATH   use this tollgate binary; do not build
#       --policy DIR          tollgate (plain) decides with the policy in DIR instead of the
#                             bundled one (benches/load/policies/: one-line, glob-regex); a
#                             make-data.py in DIR writes its data.json into the run's temp dir
#       --no-build            use target/release/tollgate as it is; do not build
#       --output FILE         also write the results as TSV to FILE
#       --pin                 pin each proxy (and nginx for direct) to CPU 0, nginx and wrk to CPU 1
#                             (taskset), and report the server's CPU µs per request
#                             (utime+stime from /proc/PID/stat over the measured run)
#       --keep                keep the temp dir (configs and logs) and print its path
#   -h, --help
# Needs: nginx wrk squid tinyproxy curl python3 (bash .ci/run installs them); cargo to build.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=10
CONNECTIONS=64
THREADS=2
WARMUP=2
BODY_BYTES=100
LATENCY_DURATION=10
TARGETS=direct,tollgate,tollgate-cred,squid,tinyproxy
BENCH_TOKEN=bench-token-$RANDOM$RANDOM
TOLLGATE_BIN=
POLICY_DIR=
BUILD=1
OUTPUT=
KEEP=0
START_TIMEOUT=30                        # seconds for any server to accept
BUILD_TIMEOUT=${LOAD_BUILD_TIMEOUT:-3600}

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
want() { [[ ",$TARGETS," == *",$1,"* ]]; }

log() { printf '[load] %s\n' "$*" >&2; }
die() { printf '[load] error: %s\n' "$*" >&2; exit 1; }

tool() {  # tool NAME: path, looking in the sbin folders too (nginx, squid live there)
  PATH="$PATH:/usr/sbin:/sbin:/usr/local/sbin" command -v "$1" \
    || die "$1 is not installed (bash .ci/run installs it, or: apt-get install nginx-light squid tinyproxy wrk)"
}
# shellcheck source=benches/common/nginx.sh
. "$ROOT/benches/common/nginx.sh"
NGINX=$(tool nginx); WRK=$(tool wrk); CURL=$(tool curl); tool python3 >/dev/null
want squid && SQUID=$(tool squid)
want tinyproxy && TINYPROXY=$(tool tinyproxy)

# --- processes and cleanup ---------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-load.XXXXXX")
chmod 755 "$WORK"
PIDS=()
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  set +e   # best effort: one failed kill or wait must not skip the rest
  local pid
  if [[ -n ${FG_PID:-} ]]; then kill -TERM "$FG_PID" 2>/dev/null; wait "$FG_PID" 2>/dev/null; fi
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if (( KEEP )); then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# run_fg CMD…: run a long command (build, wrk) in the background and wait for it, so that a
# TERM/INT reaches the trap at once instead of after the command ends; the trap stops it.
FG_PID=
run_fg() {
  "$@" &
  FG_PID=$!
  local rc=0
  wait "$FG_PID" || rc=$?
  FG_PID=
  return "$rc"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port NAME PORT PID LOG: poll a connect every 50 ms until it succeeds (bounded);
# fail early, with the log, if the process died.
wait_port() {
  local name=$1 port=$2 pid=$3 logf=$4 deadline=$((SECONDS + START_TIMEOUT))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$logf" >&2 || true
      die "$name exited before 127.0.0.1:$port accepted"
    fi
    (( SECONDS < deadline )) || { tail -n 30 "$logf" >&2 || true; die "$name: 127.0.0.1:$port not accepting after ${START_TIMEOUT}s"; }
    sleep 0.05
  done
}

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
  local d=$WORK/nginx body
  mkdir -p "$d/tmp"
  ORIGIN_PORT=$(free_port)
  # BODY_BYTES bytes: 'x' * (n-1) and a newline (nginx turns the two characters \n into one).
  body="$(printf '%*s' $((BODY_BYTES - 1)) '' | tr ' ' x)\\n"
  nginx_conf "$d" notice "    server {
        listen 127.0.0.1:$ORIGIN_PORT;
        location = /hello { default_type text/plain; return 200 \"$body\"; }
        # tollgate-cred's sanity check: 200 only with the injected credential.
        location = /auth-check {
            if (\$http_authorization != \"Bearer $BENCH_TOKEN\") { return 401; }
            return 200 \"ok\";
        }
    }" >"$d/nginx.conf"
  "${ON_CPU1[@]}" "$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/error.log" >"$d/stdout.log" 2>&1 &
  PIDS+=("$!")
  SERVER_PID[direct]=$!
  wait_port nginx "$ORIGIN_PORT" $! "$d/error.log"
  ORIGIN_URL="http://127.0.0.1:$ORIGIN_PORT/hello"
  log "nginx origin on 127.0.0.1:$ORIGIN_PORT ($BODY_BYTES-byte /hello)"
}

# --- tollgate --------------------------------------------------------------------------------
build_tollgate() {
  if [[ -z $TOLLGATE_BIN ]]; then
    TOLLGATE_BIN=$ROOT/target/release/tollgate
    if (( BUILD )); then
      log "building tollgate (release; bounded ${BUILD_TIMEOUT}s)"
      run_fg timeout "$BUILD_TIMEOUT" cargo build --manifest-path "$ROOT/Cargo.toml" --release --locked \
        --bin tollgate >&2 || die "cargo build --release failed"
    fi
  fi
  [[ -x $TOLLGATE_BIN ]] || die "no tollgate binary at $TOLLGATE_BIN (drop --no-build, or pass --tollgate-bin)"
}

# start_tollgate [cred]: the plain variant, or (cred) one that injects a static credential.
# Sets TOLLGATE_PORT (plain) or TOLLGATE_CRED_PORT (cred).
start_tollgate() {
  local variant=${1:-plain} d=$WORK/tollgate deadline line extra=
  [[ $variant == cred ]] && d=$WORK/tollgate-cred
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
  elif [[ -n $POLICY_DIR ]]; then
    mkdir -p "$d/policy"
    cp "$POLICY_DIR"/*.rego "$d/policy/"
    if [[ -f $POLICY_DIR/make-data.py ]]; then
      python3 "$POLICY_DIR/make-data.py" "$d/policy/data.json" || die "$POLICY_DIR/make-data.py failed"
    fi
    extra="policy:
  path: $d/policy"
  fi
  # Config keys per SPEC §2. No policy.path: the bundled policy and data, where the
  # development caller may reach loopback on any port.
  cat >"$d/config.yaml" <<EOF
listeners:
  - name: bench
    address: 127.0.0.1:0
    mode: forward
admin:
  address: 127.0.0.1:0
identity:
  workload_spiffe_id: spiffe://tollgate.local/dev/agent
upstream:
  allow_private: ["127.0.0.0/8"]
telemetry:
  decision_log: $d/decisions.log
  log_format: json
$extra
EOF
  TOLLGATE_STATE_DIR=$d/state "${ON_CPU0[@]}" "$TOLLGATE_BIN" run -c "$d/config.yaml" >"$d/stdout.log" 2>"$d/stderr.log" &
  local pid=$!
  PIDS+=("$pid")
  if [[ $variant == cred ]]; then SERVER_PID[tollgate-cred]=$pid; else SERVER_PID[tollgate]=$pid; fi
  # Readiness per docs/INTERFACES.md: the "listener ready" line carries the bound address.
  deadline=$((SECONDS + START_TIMEOUT))
  local port=
  while [[ -z $port ]]; do
    line=$(grep -m1 '"message":"listener ready"' "$d/stderr.log" 2>/dev/null || true)
    if [[ -n $line ]]; then
      port=$(sed -E 's/.*"address":"127\.0\.0\.1:([0-9]+)".*/\1/' <<<"$line")
      [[ $port =~ ^[0-9]+$ ]] || die "cannot read the port from: $line"
      break
    fi
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$d/stderr.log" >&2; die "tollgate exited before it was ready"; }
    (( SECONDS < deadline )) || { tail -n 30 "$d/stderr.log" >&2; die "tollgate not ready after ${START_TIMEOUT}s"; }
    sleep 0.05
  done
  wait_port "tollgate-$variant" "$port" "$pid" "$d/stderr.log"
  if [[ $variant == cred ]]; then
    TOLLGATE_CRED_PORT=$port
    # The credential really reaches the origin (and the agent sends none).
    local status
    status=$("$CURL" -s -o /dev/null -w '%{http_code}' --max-time 10 -x "http://127.0.0.1:$port" \
      "http://127.0.0.1:$ORIGIN_PORT/auth-check" || true)
    [[ $status == 200 ]] || die "tollgate-cred: the origin did not receive the injected credential (HTTP $status)"
  else
    TOLLGATE_PORT=$port
  fi
  log "tollgate-$variant ($("$TOLLGATE_BIN" version 2>/dev/null | head -n1 || echo '?')) on 127.0.0.1:$port"
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

ratio() {  # ratio A B: A/B with 2 decimals, "-" when either is missing
  local a=${1:-} b=${2:-}
  [[ $a =~ ^[0-9.]+$ && $b =~ ^[0-9.]+$ ]] || { echo "-"; return; }
  awk -v a="$a" -v b="$b" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'
}

# --- run ------------------------------------------------------------------------------------
{ want tollgate || want tollgate-cred; } && build_tollgate
start_nginx
want tollgate && start_tollgate
want tollgate-cred && start_tollgate cred
want squid && start_squid
want tinyproxy && start_tinyproxy

ORDER=()
for t in direct tollgate tollgate-cred squid tinyproxy; do want "$t" && ORDER+=("$t"); done
machine before
for t in "${ORDER[@]}"; do
  case $t in
    direct) measure direct "$ORIGIN_PORT" ;;
    tollgate) measure tollgate "$TOLLGATE_PORT" ;;
    tollgate-cred) measure tollgate-cred "$TOLLGATE_CRED_PORT" ;;
    squid) measure squid "$SQUID_PORT" ;;
    tinyproxy) measure tinyproxy "$TINYPROXY_PORT" ;;
  esac
done
if (( LATENCY_DURATION > 0 )); then
  for t in "${ORDER[@]}"; do
    [[ ${RPS[$t]} == FAILED ]] && continue
    case $t in
      direct) port=$ORIGIN_PORT ;;
      tollgate) port=$TOLLGATE_PORT ;;
      tollgate-cred) port=$TOLLGATE_CRED_PORT ;;
      squid) port=$SQUID_PORT ;;
      tinyproxy) port=$TINYPROXY_PORT ;;
    esac
    measure "$t" "$port" 1 1 "$LATENCY_DURATION" "$t@1"
  done
fi
machine after

{
  echo
  echo "Loopback load: wrk $THREADS threads, $CONNECTIONS connections, ${DURATION}s per target (warm-up ${WARMUP}s),"
  echo "GET of a $BODY_BYTES-byte body from nginx; $(nproc) CPUs shared by wrk, the proxy and nginx."
  (( PIN )) && echo "Pinned: each proxy on CPU 0, nginx and wrk on CPU 1; CPU µs/req is the server's utime+stime over the measured run (nginx's for direct)."
  printf '%-13s %11s %9s %9s %9s %9s %10s %9s %8s %8s %10s\n' \
    target 'req/s' 'p50 ms' 'p99 ms' 'vs direct' 'vs squid' 'vs tinyprx' '+p50 ms' non-2xx 'sock err' 'CPU µs/req'
  for t in "${ORDER[@]}"; do
    if [[ ${RPS[$t]} == FAILED ]]; then
      printf '%-13s %12s\n' "$t" FAILED
      continue
    fi
    added=$(awk -v a="${P50[$t]}" -v b="${P50[direct]:-}" 'BEGIN { if (b == "") print "-"; else printf "%+.3f", a - b }')
    printf '%-13s %11s %9s %9s %9s %9s %10s %9s %8s %8s %10s\n' "$t" "${RPS[$t]}" "${P50[$t]}" "${P99[$t]}" \
      "$(ratio "${RPS[$t]}" "${RPS[direct]:-}")" "$(ratio "${RPS[$t]}" "${RPS[squid]:-}")" \
      "$(ratio "${RPS[$t]}" "${RPS[tinyproxy]:-}")" "$added" "${NON2XX[$t]}" "${SOCKERR[$t]}" "${CPU_US[$t]:--}"
  done
  echo "(ratios are requests/s of the row over the column's target; +p50 is the row's p50 minus direct's)"
  if (( LATENCY_DURATION > 0 )); then
    echo
    echo "Latency without queueing: wrk 1 thread, 1 connection, ${LATENCY_DURATION}s per target."
    printf '%-13s %11s %9s %9s %9s\n' target 'req/s' 'p50 ms' 'p99 ms' '+p50 ms'
    for t in "${ORDER[@]}"; do
      k="$t@1"
      if [[ ${RPS[$k]:-FAILED} == FAILED ]]; then
        printf '%-13s %12s\n' "$t" FAILED
        continue
      fi
      added=$(awk -v a="${P50[$k]}" -v b="${P50[direct@1]:-}" 'BEGIN { if (b == "") print "-"; else printf "%+.3f", a - b }')
      printf '%-13s %11s %9s %9s %9s\n' "$t" "${RPS[$k]}" "${P50[$k]}" "${P99[$k]}" "$added"
    done
  fi
}

if [[ -n $OUTPUT ]]; then
  {
    printf 'target\trps\tp50_ms\tp99_ms\tnon_2xx\tsocket_errors\n'
    for t in "${ORDER[@]}"; do
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "${RPS[$t]}" "${P50[$t]:-}" "${P99[$t]:-}" "${NON2XX[$t]:-}" "${SOCKERR[$t]:-}"
    done
  } >"$OUTPUT"
  log "results written to $OUTPUT"
fi
failed=0
for t in "${ORDER[@]}"; do [[ ${RPS[$t]} == FAILED ]] && failed=1; done
exit $failed
