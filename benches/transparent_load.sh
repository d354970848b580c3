#!/usr/bin/env bash
# Load through tollgate's transparent listener next to its forward listener, in one tollgate
# process, in network namespaces set up as a sidecar pod (root only; docs/BENCHMARKS.md §7):
#   - an "origin" namespace: nginx on 192.0.2.2 port 80 (HTTP) and 443 (TLS, its own CA)
#     answering GET /hello with a 100-byte body;
#   - a "pod" namespace: tollgate (release build) as UID 1337 without capabilities, with a
#     transparent listener on 127.0.0.1:15001 and a forward listener on 127.0.0.1:15002, the
#     same small Rego policy deciding every request, the decision log to a file; the redirect
#     installed by `tollgate redirect install` with NET_ADMIN only; wrk as UID 2000.
# Runs, each with CONNECTIONS keep-alive connections for DURATION seconds after a warm-up:
#   direct         wrk → http://192.0.2.2/hello before the redirect is installed
#   forward-http   wrk → forward listener, absolute-form http://api.test/hello (benches/load/proxy.lua)
#   transp-http    wrk → http://api.test/hello, redirected to the transparent listener
#   forward-https  connect_load → forward listener: CONNECT api.test:443, then TLS to the leaf
#                  tollgate mints for api.test (intercepted), GET /hello
#   transp-https   connect_load → https://api.test/hello, redirected, TLS intercepted
# wrk cannot send CONNECT, so both intercepted-TLS rows use the same client,
# `examples/connect_load.rs` (tokio + rustls, one thread, HTTP/1.1 keep-alive).
# -r ROUNDS repeats the four proxied rows, forward and transparent alternating (the order
# flips every round), with the load average before each round.
# For each: requests/s, p50, p99 and tollgate's CPU µs per request (utime+stime from
# /proc/PID/stat before and after, ÷ requests completed).
# --pin: tollgate on CPU 0 (taskset), nginx and the load generators on CPU 1.
#
# Usage: benches/transparent_load.sh [-d SECONDS] [-c N] [-t N] [-w SECONDS] [-r ROUNDS] [--pin]
#        [--tollgate-bin PATH] [--client-bin PATH]
# Needs: root, ip, setpriv, nginx, wrk, openssl, curl, taskset (--pin), iptables or nft;
# target/release/tollgate and target/release/examples/connect_load
# (cargo build --release --bin tollgate --example connect_load).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=10
CONNECTIONS=64
THREADS=2
WARMUP=2
TOLLGATE_BIN=$ROOT/target/release/tollgate
CLIENT_BIN=$ROOT/target/release/examples/connect_load
ROUNDS=1
PIN=
while [[ $# -gt 0 ]]; do
  case $1 in
    -r) ROUNDS=$2; shift 2 ;;
    --pin) PIN=1; shift ;;
    --client-bin) CLIENT_BIN=$2; shift 2 ;;
    -d) DURATION=$2; shift 2 ;;
    -c) CONNECTIONS=$2; shift 2 ;;
    -t) THREADS=$2; shift 2 ;;
    -w) WARMUP=$2; shift 2 ;;
    --tollgate-bin) TOLLGATE_BIN=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "transparent_load.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
log() { printf '[transparent-load] %s\n' "$*" >&2; }
die() { printf '[transparent-load] error: %s\n' "$*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root (network namespaces)"
[[ -x $TOLLGATE_BIN ]] || die "$TOLLGATE_BIN missing: cargo build --release"
[[ -x $CLIENT_BIN ]] || die "$CLIENT_BIN missing: cargo build --release --example connect_load"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "-r takes a positive number"
for t in ip setpriv nginx wrk openssl curl ${PIN:+taskset}; do
  PATH="$PATH:/usr/sbin:/sbin" command -v "$t" >/dev/null || die "$t is not installed"
done
NGINX=$(PATH="$PATH:/usr/sbin" command -v nginx)

TAG=tgbench-$$
POD=$TAG-pod
ORIGIN=$TAG-origin
WORK=$(mktemp -d /tmp/tollgate-transparent-load.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$POD" 2>/dev/null || true
  ip netns del "$ORIGIN" 2>/dev/null || true
  rm -rf "/etc/netns/$POD"; [[ -n ${KEEP:-} ]] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

# --pin: tollgate alone on CPU 0, everything else (nginx, wrk, connect_load) on CPU 1.
PROXY_CPU=(); LOAD_CPU=()
if [[ -n $PIN ]]; then PROXY_CPU=(taskset -c 0); LOAD_CPU=(taskset -c 1); fi
in_pod() { ip netns exec "$POD" "$@"; }
as_agent() { in_pod "${LOAD_CPU[@]}" setpriv --reuid=2000 --regid=2000 --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"; }

# Namespaces and the veth pair (documentation addresses only).
ip netns add "$POD"; ip netns add "$ORIGIN"
ip link add tgbpod0 netns "$POD" type veth peer name tgborig0 netns "$ORIGIN"
in_pod ip link set lo up
ip netns exec "$ORIGIN" ip link set lo up
in_pod ip addr add 192.0.2.1/24 dev tgbpod0
ip netns exec "$ORIGIN" ip addr add 192.0.2.2/24 dev tgborig0
in_pod ip link set tgbpod0 up
ip netns exec "$ORIGIN" ip link set tgborig0 up
mkdir -p "/etc/netns/$POD"
printf '127.0.0.1 localhost\n192.0.2.2 api.test\n' >"/etc/netns/$POD/hosts"

# The origin: nginx, HTTP and TLS, a fixed 100-byte body.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=bench origin CA" -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign,cRLSign \
  -keyout "$WORK/origin-ca-key.pem" -out "$WORK/origin-ca.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=api.test \
  -keyout "$WORK/origin-key.pem" -out "$WORK/origin.csr" 2>/dev/null
printf 'subjectAltName=DNS:api.test\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$WORK/origin.ext"
openssl x509 -req -in "$WORK/origin.csr" -CA "$WORK/origin-ca.pem" -CAkey "$WORK/origin-ca-key.pem" \
  -CAcreateserial -days 2 -extfile "$WORK/origin.ext" -out "$WORK/origin.pem" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=bench interception CA" -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign,cRLSign \
  -keyout "$WORK/intercept-ca-key.pem" -out "$WORK/intercept-ca.pem" 2>/dev/null
BODY=$(printf 'x%.0s' $(seq 1 100))
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx; uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  keepalive_requests 1000000;
  server {
    listen 192.0.2.2:80;
    listen 192.0.2.2:443 ssl;
    ssl_certificate $WORK/origin.pem;
    ssl_certificate_key $WORK/origin-key.pem;
    location /hello { default_type text/plain; return 200 "$BODY"; }
  }
}
EOF
ip netns exec "$ORIGIN" "${LOAD_CPU[@]}" "$NGINX" -c "$WORK/nginx/nginx.conf" &
PIDS+=($!)

# tollgate: the same policy for both listeners.
cat >"$WORK/policy.rego" <<'EOF'
package tollgate

import rego.v1

default decision := {"allow": false, "reason": "destination_not_allowed"}

decision := {"allow": true, "mode": "intercept"} if {
	input.request == null
	input.destination.host == "api.test"
}

decision := {"allow": true, "reason": "hello"} if {
	input.request.host == "api.test"
	input.request.method == "GET"
	input.request.path == "/hello"
}
EOF
echo '{}' >"$WORK/data.json"
cp "$TOLLGATE_BIN" "$WORK/tollgate"
cp "$CLIENT_BIN" "$WORK/connect_load"
cat >"$WORK/config.yaml" <<EOF
listeners:
  - {name: transparent, address: '127.0.0.1:15001', mode: transparent}
  - {name: forward, address: '127.0.0.1:15002'}
admin: {address: '127.0.0.1:15000', tls: {cert: origin.pem, key: origin-key.pem}, allowed_spiffe_ids: ['spiffe://bench.test/ops']}
identity: {workload_spiffe_id: 'spiffe://bench.test/ns/agents/sa/bench', trust_domains: {bench.test: {bundle: intercept-ca.pem}}}
intercept_ca: {cert: intercept-ca.pem, key: intercept-ca-key.pem}
policy: {path: policy.rego, data: data.json}
upstream: {allow_private: [192.0.2.0/24], ca: origin-ca.pem}
telemetry: {decision_log: $WORK/decisions.log}
EOF
touch "$WORK/decisions.log"
chmod -R a+rX "$WORK"; chown 1337 "$WORK/decisions.log"

wait_http() {  # wait_http URL [curl args]: up to 10 s for a 200
  local url=$1; shift
  for _ in $(seq 1 100); do
    [[ $(as_agent curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" || true) == 200 ]] && return 0
    sleep 0.1
  done
  die "$url never answered 200"
}

wait_http http://192.0.2.2/hello

run_wrk() {  # run_wrk NAME URL [wrk args]: prints "NAME req/s p50 p99 cpu_us"
  local name=$1 url=$2; shift 2
  if (( WARMUP > 0 )); then as_agent wrk -t "$THREADS" -c "$CONNECTIONS" -d "${WARMUP}s" "$@" "$url" >/dev/null; fi
  local before after
  before=$(cpu_ticks)
  as_agent wrk -t "$THREADS" -c "$CONNECTIONS" -d "${DURATION}s" --latency "$@" "$url" >"$WORK/wrk-$name.txt"
  after=$(cpu_ticks)
  local requests rps p50 p99 errors
  requests=$(awk '/requests in/ {print $1}' "$WORK/wrk-$name.txt")
  rps=$(awk '/^Requests\/sec/ {print $2}' "$WORK/wrk-$name.txt")
  p50=$(awk '$1 == "50%" {print $2}' "$WORK/wrk-$name.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$WORK/wrk-$name.txt")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' "$WORK/wrk-$name.txt" | tr '\n' ' ')
  local cpu=-
  if [[ -n $TG_PID ]]; then
    cpu=$(awk -v t=$((after - before)) -v r="$requests" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t * 1e6 / hz / r }')
  fi
  printf '| %s | %s | %s | %s | %s | %s |\n' "$name" "$rps" "$p50" "$p99" "$cpu" "${errors:-none}"
}
run_client() {  # run_client NAME URL [connect_load args]: the same row, from connect_load
  local name=$1 url=$2; shift 2
  if (( WARMUP > 0 )); then
    as_agent "$WORK/connect_load" --url "$url" --cacert "$WORK/intercept-ca.pem" -c "$CONNECTIONS" -d "$WARMUP" "$@" >/dev/null
  fi
  local before after line
  before=$(cpu_ticks)
  line=$(as_agent "$WORK/connect_load" --url "$url" --cacert "$WORK/intercept-ca.pem" -c "$CONNECTIONS" -d "$DURATION" "$@")
  after=$(cpu_ticks)
  local requests rps p50 p99 errors
  requests=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$line")
  rps=$(sed -n 's/.*rps=\([0-9.]*\).*/\1/p' <<<"$line")
  p50=$(sed -n 's/.*p50_ms=\([0-9.]*\).*/\1ms/p' <<<"$line")
  p99=$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1ms/p' <<<"$line")
  errors=$(sed -n 's/.*errors=\([0-9]*\).*/\1/p' <<<"$line")
  [[ -n $requests && $requests -gt 0 ]] || die "$name: connect_load completed no request: $line"
  local cpu
  cpu=$(awk -v t=$((after - before)) -v r="$requests" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t * 1e6 / hz / r }')
  printf '| %s | %s | %s | %s | %s | %s |\n' "$name" "$rps" "$p50" "$p99" "$cpu" "$([[ $errors == 0 ]] && echo none || echo "$errors")"
}
TG_PID=
cpu_ticks() {
  if [[ -z $TG_PID ]]; then echo 0; return; fi
  awk '{print $14 + $15}' "/proc/$TG_PID/stat"
}

echo "| target | req/s | p50 | p99 | tollgate CPU µs/req | errors |"
echo "|---|---:|---:|---:|---:|---|"
run_wrk direct http://192.0.2.2/hello

in_pod setpriv --bounding-set=-all,+net_admin --inh-caps=-all,+net_admin --ambient-caps=-all,+net_admin -- \
  "$TOLLGATE_BIN" redirect install --proxy-uid 1337 --proxy-port 15001 >&2
# Not through a shell function: $! must be tollgate itself (ip netns exec and setpriv exec it).
ip netns exec "$POD" "${PROXY_CPU[@]}" setpriv --reuid=1337 --regid=1337 --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs -- \
  "$WORK/tollgate" run -c "$WORK/config.yaml" >"$WORK/stdout.log" 2>"$WORK/stderr.log" &
PIDS+=($!)
TG_PID=$!
wait_http http://api.test/hello
wait_http https://api.test/hello --cacert "$WORK/intercept-ca.pem"
wait_http http://api.test/hello -x http://127.0.0.1:15002
wait_http https://api.test/hello -x http://127.0.0.1:15002 --cacert "$WORK/intercept-ca.pem"
[[ $(cat "/proc/$TG_PID/comm") == tollgate ]] || die "pid $TG_PID is not tollgate"
if [[ -n $PIN ]]; then log "tollgate's CPUs: $(taskset -cp "$TG_PID" | sed 's/.*: //')"; fi

sed -e "s|@URL@|http://api.test/hello|" -e "s|@HOST@|api.test|" "$ROOT/benches/load/proxy.lua" >"$WORK/proxy.lua"
chmod a+r "$WORK/proxy.lua"
forward_rows() {
  run_wrk forward-http http://127.0.0.1:15002 -s "$WORK/proxy.lua"
  run_client forward-https https://api.test/hello --proxy 127.0.0.1:15002
}
transparent_rows() {
  run_wrk transp-http http://api.test/hello
  run_client transp-https https://api.test/hello
}
for round in $(seq 1 "$ROUNDS"); do
  echo "| round $round, load average $(cut -d' ' -f1-3 /proc/loadavg) | | | | | |"
  if (( round % 2 )); then forward_rows; transparent_rows; else transparent_rows; forward_rows; fi
done
log "load average: $(cut -d' ' -f1-3 /proc/loadavg); decisions logged: $(wc -l <"$WORK/decisions.log")"
