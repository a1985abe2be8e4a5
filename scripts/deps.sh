#!/usr/bin/env bash
# Installs the real services the tests start (Debian packages), when missing.
# A test never skips for want of one: if this cannot install it, it fails here.
set -euo pipefail

need=()
[[ -x /usr/bin/prometheus-alertmanager ]] || need+=(prometheus-alertmanager)
# IP blocking is tested with real nftables in network namespaces.
[[ -x /usr/sbin/nft ]] || need+=(nftables)
[[ -x /usr/sbin/ip ]] || need+=(iproute2)
# The data-plane actuators are tested against real PostgreSQL (a primary and
# a streaming replica) and Redis servers; any packaged major version will do.
compgen -G '/usr/lib/postgresql/*/bin/pg_basebackup' >/dev/null || need+=(postgresql)
[[ -x /usr/bin/redis-server ]] || need+=(redis-server)

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
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
