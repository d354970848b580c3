# Shared by benches/load.sh and benches/conns_rss.sh (sourced): processes started in the
# background, stopped on exit, and waited for with bounded polls. The sourcing script defines
# log and die, and sets WORK (its temp dir), KEEP (1: keep WORK) and START_TIMEOUT (seconds);
# it appends every server's PID to PIDS.

PIDS=()
FG_PID=

# bench_cleanup: the EXIT trap. TERM to the foreground command and every server, KILL after
# 5 s, then WORK removed (or kept and named, with KEEP=1).
# shellcheck disable=SC2317  # invoked by the EXIT trap
bench_cleanup() {
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

# run_fg CMD…: run a long command (build, load generator) in the background and wait for it,
# so that a TERM/INT reaches the trap at once instead of after the command ends; the trap
# stops it.
run_fg() {
  "$@" &
  FG_PID=$!
  local rc=0
  wait "$FG_PID" || rc=$?
  FG_PID=
  return "$rc"
}

# release_build WHAT ARGS…: cargo build --release --locked ARGS (e.g. --bin tollgate), bounded
# by LOAD_BUILD_TIMEOUT seconds (default 3600); dies on failure.
release_build() {
  local what=$1 limit=${LOAD_BUILD_TIMEOUT:-3600}
  shift
  log "building $what (release; bounded ${limit}s)"
  run_fg timeout "$limit" cargo build --manifest-path "$ROOT/Cargo.toml" --release --locked "$@" >&2 \
    || die "cargo build --release $* failed"
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

# tollgate_port PID STDERR: waits (bounded) for tollgate's first "listener ready" line
# (docs/INTERFACES.md: it carries the bound address) and prints its 127.0.0.1 port.
tollgate_port() {
  local pid=$1 logf=$2 deadline=$((SECONDS + START_TIMEOUT)) line port
  while :; do
    line=$(grep -m1 '"message":"listener ready"' "$logf" 2>/dev/null || true)
    if [[ -n $line ]]; then
      port=$(sed -E 's/.*"address":"127\.0\.0\.1:([0-9]+)".*/\1/' <<<"$line")
      [[ $port =~ ^[0-9]+$ ]] || die "cannot read the port from: $line"
      echo "$port"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$logf" >&2; die "tollgate exited before it was ready"; }
    (( SECONDS < deadline )) || { tail -n 30 "$logf" >&2; die "tollgate not ready after ${START_TIMEOUT}s"; }
    sleep 0.05
  done
}

# tollgate_config DECISION_LOG [UPSTREAM_CA [EXTRA]]: prints a bench configuration: one forward
# listener and the admin listener on 127.0.0.1:0 (the ports come from the "listener ready"
# lines), the development caller spiffe://tollgate.local/dev/agent (the bundled policy lets it
# reach loopback on any port, intercepted), loopback allowed upstream (and UPSTREAM_CA trusted
# for origins, if given), the decision log to DECISION_LOG (a file, or off), then EXTRA (more
# top-level YAML: policy, intercept_ca, limits, credentials). No policy.path in EXTRA: the
# bundled policy and data.
tollgate_config() {
  local decision_log=$1 upstream_ca=${2:-} extra=${3:-}
  cat <<YAML
listeners:
  - name: bench
    address: 127.0.0.1:0
    mode: forward
admin:
  address: 127.0.0.1:0
identity:
  workload_spiffe_id: spiffe://tollgate.local/dev/agent
upstream:
  allow_private: ["127.0.0.0/8"]${upstream_ca:+
  ca: $upstream_ca}
telemetry:
  decision_log: $decision_log
  log_format: json
$extra
YAML
}

# intercept_ca_yaml PKI_DIR: the intercept_ca block for bench_pki's interception CA.
intercept_ca_yaml() {
  printf 'intercept_ca:\n  cert: %s\n  key: %s\n' "$1/intercept-ca.pem" "$1/intercept-ca-key.pem"
}
