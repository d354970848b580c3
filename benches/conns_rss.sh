#!/usr/bin/env bash
# tollgate's memory with many open agent connections (issue 13: "peak RSS ≤ 48 MiB with 1,000
# open agent connections"). Starts an nginx origin and tollgate (release build, the bundled
# policy, decision log to a file), then benches/load/conns.py opens N keep-alive agent
# connections through tollgate's forward listener, sends one GET on each (absolute-form
# http://127.0.0.1:ORIGIN/hello), keeps them all open, and prints tollgate's VmHWM (peak RSS)
# and VmRSS from /proc/PID/status, and its open descriptors:
#   before               tollgate started and answered one request (curl), no agent connection
#   all N answered       every connection opened and has its answer, all still open
#   after holding S s    the same, S seconds later (the count of connections still open)
#   after closing        the client closed them all (tollgate's descriptors back, or 10 s)
# --tls: the same with N intercepted TLS connections: CONNECT 127.0.0.1:ORIGIN, TLS to the
# leaf tollgate mints (an openssl interception CA; benches/common/pki.sh), one GET inside each
# tunnel, tollgate to an HTTPS nginx origin (its own openssl CA).
# Everything listens on 127.0.0.1, lives in a temp dir, is bounded in time and is stopped on
# exit. The open-file limit is raised for the run (tollgate, nginx and the client each need
# more than N descriptors), and so is tollgate's limits.header_read_timeout (it closes idle
# keep-alive connections after 10 s by default). Exit 1 if any connection failed or closed
# before the readings.
#
# Usage: benches/conns_rss.sh [options]
#   -n, --connections N   agent connections to hold open (default 1000)
#       --tls             intercepted TLS connections instead of plain HTTP
#       --hold SECONDS    how long to keep them open after the last answer (default 2)
#       --pin             tollgate on CPU 0, nginx and the client on CPU 1 (taskset)
#       --tollgate-bin PATH  use this tollgate binary; do not build
#       --no-build        use target/release/tollgate as it is; do not build
#       --keep            keep the temp dir (configs and logs) and print its path
#       --max-hwm-mib N   exit 1 if tollgate's peak RSS (VmHWM) passed N MiB (issue 13: 48)
#   -h, --help
# Needs: nginx curl python3 (bash .ci/run installs them), openssl for --tls, taskset for
# --pin; cargo to build. See docs/BENCHMARKS.md §13.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONNS=1000
TLS=0
HOLD=2
PIN=0
TOLLGATE_BIN=
BUILD=1
KEEP=0
MAX_HWM_MIB=
START_TIMEOUT=30                        # seconds for any server to accept
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case $1 in
    -n|--connections) CONNS=$2; shift 2 ;;
    --tls) TLS=1; shift ;;
    --hold) HOLD=$2; shift 2 ;;
    --pin) PIN=1; shift ;;
    --tollgate-bin) TOLLGATE_BIN=$2; BUILD=0; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --keep) KEEP=1; shift ;;
    --max-hwm-mib) MAX_HWM_MIB=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "conns_rss.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for n in "$CONNS" "$HOLD" ${MAX_HWM_MIB:+"$MAX_HWM_MIB"}; do
  [[ $n =~ ^[0-9]+$ ]] || { echo "conns_rss.sh: expected a whole number, got '$n'" >&2; exit 2; }
done
(( CONNS >= 1 && CONNS <= 20000 )) || { echo "conns_rss.sh: -n must be 1 ..= 20000" >&2; exit 2; }

log() { printf '[conns-rss] %s\n' "$*" >&2; }
die() { printf '[conns-rss] error: %s\n' "$*" >&2; exit 1; }
tool() {  # tool NAME: path, looking in the sbin folders too (nginx lives there)
  PATH="$PATH:/usr/sbin:/sbin:/usr/local/sbin" command -v "$1" \
    || die "$1 is not installed (bash .ci/run installs it, or: apt-get install nginx-light curl openssl)"
}
# shellcheck source=benches/common/nginx.sh
. "$ROOT/benches/common/nginx.sh"
# shellcheck source=benches/common/pki.sh
. "$ROOT/benches/common/pki.sh"
NGINX=$(tool nginx); CURL=$(tool curl); tool python3 >/dev/null
(( TLS )) && OPENSSL=$(tool openssl)
ON_CPU0=(); ON_CPU1=()
if (( PIN )); then tool taskset >/dev/null; ON_CPU0=(taskset -c 0); ON_CPU1=(taskset -c 1); fi

# Each of tollgate, nginx and the client holds about N (TLS: tollgate 2N) descriptors.
want_fds=$((2 * CONNS + 256))
if (( $(ulimit -n) < want_fds )); then
  ulimit -n "$want_fds" 2>/dev/null \
    || die "cannot raise the open-file limit to $want_fds (now $(ulimit -n)); run as root or lower -n"
fi

# --- processes and cleanup ---------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-conns-rss.XXXXXX")
chmod 755 "$WORK"
# shellcheck source=benches/common/run.sh
. "$ROOT/benches/common/run.sh"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# --- build -----------------------------------------------------------------------------------
if [[ -z $TOLLGATE_BIN ]]; then
  TOLLGATE_BIN=$ROOT/target/release/tollgate
  (( BUILD )) && release_build tollgate --bin tollgate
fi
[[ -x $TOLLGATE_BIN ]] || die "no tollgate binary at $TOLLGATE_BIN (drop --no-build, or pass --tollgate-bin)"
if (( TLS )); then
  bench_pki "$WORK/pki" "$OPENSSL" || die "openssl failed: $(cat "$WORK/pki/openssl.log")"
fi

# --- origin: nginx, HTTP (and HTTPS with --tls) ----------------------------------------------
d=$WORK/nginx
mkdir -p "$d/tmp"
ORIGIN_PORT=$(free_port)
listen="listen 127.0.0.1:$ORIGIN_PORT;"
if (( TLS )); then
  listen="listen 127.0.0.1:$ORIGIN_PORT ssl;
        ssl_certificate $WORK/pki/origin.pem;
        ssl_certificate_key $WORK/pki/origin-key.pem;"
fi
nginx_conf "$d" notice "    server {
        $listen
        location = /hello { default_type text/plain; return 200 \"$(printf '%*s' 99 '' | tr ' ' x)\\n\"; }
    }" >"$d/nginx.conf"
# One worker, as in load.sh; its worker_connections (4096) bounds -n to about 4,000.
"${ON_CPU1[@]}" "$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/error.log" >"$d/stdout.log" 2>&1 &
PIDS+=("$!")
wait_port nginx "$ORIGIN_PORT" $! "$d/error.log"

# --- tollgate: the bundled policy (its loopback rule allows the dev caller on 127.0.0.1, any
# port, and intercepts) ------------------------------------------------------------------------
t=$WORK/tollgate
mkdir -p "$t/state"
# tollgate closes a keep-alive connection that sends no request head for
# limits.header_read_timeout (default 10 s), and opening 1,000 intercepted connections can take
# longer than that on a busy 2-core machine: the limit is raised past the run's length so that
# every connection is still open at the readings (the client checks).
IDLE_LIMIT=$((CONNS / 10 + HOLD + 120))
extra="limits:
  header_read_timeout: ${IDLE_LIMIT}s"
upstream_ca=
if (( TLS )); then
  extra+=$'\n'$(intercept_ca_yaml "$WORK/pki")
  upstream_ca=$WORK/pki/origin-ca.pem
fi
tollgate_config "$t/decisions.log" "$upstream_ca" "$extra" >"$t/config.yaml"
TOLLGATE_STATE_DIR=$t/state "${ON_CPU0[@]}" "$TOLLGATE_BIN" run -c "$t/config.yaml" >"$t/stdout.log" 2>"$t/stderr.log" &
TG_PID=$!
PIDS+=("$TG_PID")
PORT=$(tollgate_port "$TG_PID" "$t/stderr.log")
wait_port tollgate "$PORT" "$TG_PID" "$t/stderr.log"

# One request through it first (and, with --tls, the leaf for 127.0.0.1 minted and cached).
if (( TLS )); then
  url=https://127.0.0.1:$ORIGIN_PORT/hello
  status=$("$CURL" -s -o /dev/null -w '%{http_code}' --max-time 10 --cacert "$WORK/pki/intercept-ca.pem" \
    -x "http://127.0.0.1:$PORT" "$url" || true)
else
  url=http://127.0.0.1:$ORIGIN_PORT/hello
  status=$("$CURL" -s -o /dev/null -w '%{http_code}' --max-time 10 -x "http://127.0.0.1:$PORT" "$url" || true)
fi
[[ $status == 200 ]] || die "one request through tollgate to $url got HTTP $status, not 200"

log "tollgate ($("$TOLLGATE_BIN" version 2>/dev/null | head -n1 || echo '?')) pid $TG_PID on 127.0.0.1:$PORT;" \
  "nginx on 127.0.0.1:$ORIGIN_PORT; open-file limit $(ulimit -n); load average $(cut -d' ' -f1-3 /proc/loadavg)"
client=("${ON_CPU1[@]}" python3 "$ROOT/benches/load/conns.py" --pid "$TG_PID" --proxy "$PORT"
  --origin-port "$ORIGIN_PORT" -n "$CONNS" --hold "$HOLD")
(( TLS )) && client+=(--tls "$WORK/pki/intercept-ca.pem")
echo "tollgate with $CONNS open agent connections ($( (( TLS )) && echo 'intercepted TLS' || echo 'plain HTTP'), keep-alive, one GET each):"
rc=0
run_fg timeout "$IDLE_LIMIT" "${client[@]}" || rc=$?
kill -0 "$TG_PID" 2>/dev/null || { tail -n 30 "$t/stderr.log" >&2; die "tollgate died during the run"; }
log "load average $(cut -d' ' -f1-3 /proc/loadavg)"
(( rc == 0 )) || die "the client failed (exit $rc): a connection failed or closed early"
if [[ -n $MAX_HWM_MIB ]]; then
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$TG_PID/status")
  (( hwm <= MAX_HWM_MIB * 1024 )) ||
    die "tollgate's peak RSS was $hwm KiB, over --max-hwm-mib $MAX_HWM_MIB ($((MAX_HWM_MIB * 1024)) KiB)"
  log "peak RSS $hwm KiB, within --max-hwm-mib $MAX_HWM_MIB"
fi
