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
# Everything runs on loopback; every loop is bounded; the whole run takes
# about 9 minutes after the build on a 2-core machine (the engine part
# alone about 2).
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
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}
missing=()
command -v prometheus-node-exporter >/dev/null 2>&1 || missing+=(prometheus-node-exporter)
compgen -G '/usr/lib/postgresql/*/bin/pgbench' >/dev/null || missing+=(postgresql)
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
cargo build --release -p remedy-coordinator -p remedy-agent --bins >&2
cargo build --release -p remedy-e2e --bin remedy-bench >&2

# --- limits ------------------------------------------------------------------
# One socket per simulated agent here, one per stream in the coordinator.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# --- machine -----------------------------------------------------------------
cpu_model="$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
mem_total="$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
os="$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-unknown}")"
cmd=("$target_dir/release/remedy-bench" "${peer_args[@]}" "$@")
echo "# Remedy benchmarks"
echo
echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (with local changes)')"
echo "- machine: $(nproc) cores (${cpu_model:-unknown CPU}), ${mem_total} memory, kernel $(uname -r), ${os}"
echo "- disk of the temp dirs: $(df -h --output=source,fstype "${TMPDIR:-/tmp}" | tail -n 1 | tr -s ' ')"
echo "- open files limit: $(ulimit -n)"
echo "- load average before the run (1, 5, 15 min): $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- command: \`${cmd[*]}\`"
echo
"${cmd[@]}"
