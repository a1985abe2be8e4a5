#!/usr/bin/env bash
# Installs the real services the tests start (Debian packages), when missing.
# A test never skips for want of one: if this cannot install it, it fails here.
set -euo pipefail

# The packages whose programs are not here yet.
missing() {
	local out=()
	[[ -x /usr/bin/prometheus-alertmanager ]] || out+=(prometheus-alertmanager)
	# promtool checks the metrics both binaries serve and the self-alerts.
	[[ -x /usr/bin/promtool ]] || out+=(prometheus)
	# IP blocking is tested with real nftables in network namespaces.
	[[ -x /usr/sbin/nft ]] || out+=(nftables)
	[[ -x /usr/sbin/ip ]] || out+=(iproute2)
	# The data-plane actuators are tested against real PostgreSQL (a primary
	# and a streaming replica) and Redis servers; any packaged major version.
	compgen -G '/usr/lib/postgresql/*/bin/pg_basebackup' >/dev/null || out+=(postgresql)
	[[ -x /usr/bin/redis-server ]] || out+=(redis-server)
	# The email channel is tested against a real SMTP relay (Exim), which
	# the tests start as a plain process with a configuration of their own.
	[[ -x /usr/sbin/exim4 ]] || out+=(exim4-daemon-light)
	echo "${out[@]}"
}

read -r -a need <<<"$(missing)"
if ((${#need[@]} == 0)); then
	exit 0
fi
echo "deps: installing ${need[*]}" >&2
if ! command -v apt-get >/dev/null; then
	echo "deps: ${need[*]} missing and apt-get is not available; install them by hand" >&2
	exit 1
fi
SUDO=
if [[ $(id -u) != 0 ]]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# The packages' own services are not wanted: tests start their own instances.
# An unrelated package that fails to configure makes apt-get exit non-zero
# even when ours installed: what counts is whether ours are there after.
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" ||
	echo "deps: apt-get reported an error; checking what was installed" >&2
read -r -a still <<<"$(missing)"
if ((${#still[@]} > 0)); then
	echo "deps: could not install ${still[*]}; the tests that need them cannot run" >&2
	exit 1
fi
