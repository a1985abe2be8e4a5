#!/usr/bin/env bash
# Remedy's benchmarks (`make bench`): builds the release binaries, installs
# the peers measured beside them (PostgreSQL, Prometheus node_exporter) from
# Debian's packages when they are missing, prints the machine, and runs
# remedy-bench, which prints a Markdown table of the results on stdout.
#
# Extra arguments go to remedy-bench (see `remedy-bench --help`), e.g.
#   scripts/bench.sh --quick
#   scripts/bench.sh --only fanin --fanin 5000
#   scripts/bench.sh --only engine
#   scripts/bench.sh --only logs      # the log detectors beside grep and fail2ban
#   scripts/bench.sh --only logs --logs-size-mib 256
#   scripts/bench.sh --only tail      # the agent tailing CRI logs, and line → finding latency
#   scripts/bench.sh --only blocks    # nftables bans on 1 and 50 agents (network namespaces; root)
#   scripts/bench.sh --only tls       # new connections per second, mutual TLS beside plaintext
# Everything runs on loopback; every loop is bounded; the whole run takes
# about 12 minutes after the build on a 2-core machine (the engine part
# alone about 2, the tail part about 3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
target_dir="${CARGO_TARGET_DIR:-target}"

# --- peers -----------------------------------------------------------------
# Only the agent and postgres parts have peers to install; `--only` without
# them needs none.
only=""
prev=""
for arg in "$@"; do
  if [ "$prev" = "--only" ]; then only="$arg"; fi
  prev="$arg"
done
needs_peers=1
if [ -n "$only" ] && ! [[ ",$only," == *,agent,* || ",$only," == *,postgres,* ]]; then
  needs_peers=0
fi
# The `logs` part is a bench of remedy-shared, not a part of remedy-bench:
# it is taken out of what remedy-bench is given, with the `--logs-*`
# options (passed to it without the prefix) and `--quick` (passed to both).
run_logs=0
if [ -z "$only" ] || [[ ",$only," == *,logs,* ]]; then run_logs=1; fi
rest_only="$(echo ",$only," | sed 's/,logs,/,/g; s/^,//; s/,$//')"
run_core=1
if [ -n "$only" ] && [ -z "$rest_only" ]; then run_core=0; fi
core_args=()
logs_args=()
skip_next=""
for arg in "$@"; do
  if [ -n "$skip_next" ]; then
    if [ "$skip_next" = "only" ]; then core_args+=("$rest_only"); else logs_args+=("$arg"); fi
    skip_next=""
    continue
  fi
  case "$arg" in
    --only) core_args+=("$arg"); skip_next="only" ;;
    --logs-*) logs_args+=("--${arg#--logs-}"); skip_next="logs" ;;
    --quick) core_args+=("$arg"); logs_args+=("$arg") ;;
    *) core_args+=("$arg") ;;
  esac
done
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}
missing=()
command -v prometheus-node-exporter >/dev/null 2>&1 || missing+=(prometheus-node-exporter)
compgen -G '/usr/lib/postgresql/*/bin/pgbench' >/dev/null || missing+=(postgresql)
if [ "$run_core" -eq 0 ]; then needs_peers=0; fi
if [ "$run_logs" -eq 1 ] && ! command -v fail2ban-regex >/dev/null 2>&1; then
  missing+=(fail2ban)
  if [ "$needs_peers" -eq 0 ]; then missing=(fail2ban); needs_peers=1; fi
fi
if [ "$needs_peers" -eq 1 ] && [ "${#missing[@]}" -gt 0 ] && command -v apt-get >/dev/null; then
  echo "bench: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
    as_root apt-get update >&2 || true
    as_root apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
      || echo "bench: cannot install ${missing[*]}; the peers that need them are skipped" >&2
  fi
fi
peer_args=()
if command -v prometheus-node-exporter >/dev/null 2>&1; then
  peer_args+=(--node-exporter "$(command -v prometheus-node-exporter)")
fi
pg_bin="$(dirname "$(ls -1 /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | sort -V | tail -n 1)" 2>/dev/null || true)"
if [ -n "$pg_bin" ] && [ -x "$pg_bin/postgres" ]; then
  peer_args+=(--pg-bin "$pg_bin")
fi

# --- build -------------------------------------------------------------------
# Two commands: `--bin` applies to every package named with `-p`, so one
# command would build remedy-bench and skip the coordinator and agent.
if [ "$run_core" -eq 1 ]; then
  cargo build --release -p remedy-coordinator -p remedy-agent --bins >&2
  cargo build --release -p remedy-e2e --bin remedy-bench >&2
fi
if [ "$run_logs" -eq 1 ]; then
  cargo bench -p remedy-shared --bench logs --no-run >&2
fi

# --- limits ------------------------------------------------------------------
# One socket per simulated agent here, one per stream in the coordinator.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# --- machine -----------------------------------------------------------------
cpu_model="$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
mem_total="$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
os="$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-unknown}")"
cmd=("$target_dir/release/remedy-bench" "${peer_args[@]}" "${core_args[@]}")
logs_cmd=(cargo bench -q -p remedy-shared --bench logs -- "${logs_args[@]}")
echo "# Remedy benchmarks"
echo
echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (with local changes)')"
echo "- machine: $(nproc) cores (${cpu_model:-unknown CPU}), ${mem_total} memory, kernel $(uname -r), ${os}"
echo "- disk of the temp dirs: $(df -h --output=source,fstype "${TMPDIR:-/tmp}" | tail -n 1 | tr -s ' ')"
echo "- open files limit: $(ulimit -n)"
echo "- load average before the run (1, 5, 15 min): $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$run_core" -eq 1 ]; then echo "- command: \`${cmd[*]}\`"; fi
if [ "$run_logs" -eq 1 ]; then echo "- command (logs): \`${logs_cmd[*]}\`"; fi
echo
if [ "$run_core" -eq 1 ]; then "${cmd[@]}"; fi
if [ "$run_logs" -eq 1 ]; then
  [ "$run_core" -eq 1 ] && echo
  "${logs_cmd[@]}"
fi
