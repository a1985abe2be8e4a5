#!/usr/bin/env bash
# Remedy's benchmarks (`make bench`): builds the release binaries, installs
# the peers measured beside them (PostgreSQL, Prometheus node_exporter) from
# Debian's packages when they are missing, prints the machine, and runs
# remedy-bench, which prints a Markdown table of the results on stdout.
#
# Extra arguments go to remedy-bench (see `remedy-bench --help`), e.g.
#   scripts/bench.sh --quick
#   scripts/bench.sh --only fanin --fanin 5000
# Everything runs on loopback; every loop is bounded; the whole run takes
# about 6 minutes after the build on a 2-core machine.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
target_dir="${CARGO_TARGET_DIR:-target}"

# --- peers -----------------------------------------------------------------
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}
missing=()
command -v prometheus-node-exporter >/dev/null 2>&1 || missing+=(prometheus-node-exporter)
compgen -G '/usr/lib/postgresql/*/bin/pgbench' >/dev/null || missing+=(postgresql)
if [ "${#missing[@]}" -gt 0 ] && command -v apt-get >/dev/null; then
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
cargo build --release -p remedy-coordinator -p remedy-agent -p remedy-e2e --bin remedy-bench >&2

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
echo "- command: \`${cmd[*]}\`"
echo
"${cmd[@]}"
