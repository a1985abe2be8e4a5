#!/usr/bin/env bash
# Starts a coordinator and one agent on this machine, on the embedded store
# under ./.remedy/, and stops both on Ctrl-C.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${CARGO_TARGET_DIR:-target}/debug
STATE=.remedy
mkdir -p "$STATE"

GRPC=${REMEDY_GRPC_LISTEN:-127.0.0.1:7070}
HTTP=${REMEDY_HTTP_LISTEN:-127.0.0.1:7071}
DIAG=${REMEDY_DIAGNOSTICS_LISTEN:-127.0.0.1:7072}
NODE=${NODE_NAME:-$(hostname)}

# Prefixes a process's log lines with its name. Ctrl-C reaches the whole
# process group: the prefixer ignores it, so the processes' last lines
# (how they stopped) still show, and it ends when they close their stderr.
prefix() {
	trap '' INT TERM
	exec sed -u "s/^/[$1] /" >&2
}

pids=()
stop() {
	trap - INT TERM EXIT
	echo
	echo "stopping..."
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	wait "${pids[@]}" 2>/dev/null || true
	echo "stopped. Data stays in $STATE/ (delete it to start afresh)."
	exit "${1:-0}"
}
trap 'stop 0' INT TERM
trap 'stop 1' EXIT

# Mutual TLS from the first start: a local CA and certificates for the
# coordinator, this node's agent and the user `admin` (kept for later runs),
# and a remedyctl context that uses them.
PKI=$STATE/pki
CTLCONFIG=$STATE/remedyctl.yaml
"$BIN/remedyctl" pki init --dir "$PKI" --node "$NODE" --user admin --coordinator "https://$GRPC" \
	--write-config "$CTLCONFIG" >/dev/null
# The Alertmanager webhook takes only notifications that carry a token from
# this file, as Alertmanager sends it (http_config.authorization).
WEBHOOK_TOKENS=$STATE/alertmanager-tokens.yaml
if [[ ! -f $WEBHOOK_TOKENS ]]; then
	(umask 077 && printf -- '- user: alertmanager\n  token: %s\n' "$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')" \
		>"$WEBHOOK_TOKENS")
fi
cat >"$STATE/coordinator.yaml" <<YAML
# Written by make run. The local user admin may do everything.
authorization:
  roles:
    admin: ['user:admin']
alertmanager:
  tokens_file: $WEBHOOK_TOKENS
YAML

"$BIN/remedy-coordinator" --data-dir "$STATE/coordinator" --grpc-listen "$GRPC" --http-listen "$HTTP" \
	--runbooks-dir deploy/runbooks --config "$STATE/coordinator.yaml" \
	--tls-cert "$PKI/coordinator.crt" --tls-key "$PKI/coordinator.key" --tls-client-ca "$PKI/ca.crt" \
	2> >(prefix coordinator) &
pids+=($!)

# Wait for the coordinator before starting the agent, with a bound.
for _ in $(seq 1 100); do
	if (exec 3<>"/dev/tcp/${HTTP%:*}/${HTTP##*:}") 2>/dev/null; then break; fi
	if ! kill -0 "${pids[0]}" 2>/dev/null; then echo "the coordinator exited; see its log above" >&2; exit 1; fi
	sleep 0.1
done

# The agent may take findings by hand from holders of this token.
TOKENS=$STATE/agent-tokens.yaml
if [[ ! -f $TOKENS ]]; then
	(umask 077 && printf -- '- user: admin\n  token: %s\n' "$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')" >"$TOKENS")
fi
cat >"$STATE/agent.yaml" <<YAML
diagnostics:
  tokens_file: $TOKENS
YAML
"$BIN/remedy-agent" --node-name "$NODE" --state-dir "$STATE/agent" --coordinator "https://$GRPC" \
	--config "$STATE/agent.yaml" \
	--tls-cert "$PKI/agent-$NODE.crt" --tls-key "$PKI/agent-$NODE.key" --tls-ca "$PKI/ca.crt" \
	--diagnostics-listen "$DIAG" 2> >(prefix agent) &
pids+=($!)

cat <<MSG

Remedy is running on this machine.
  coordinator  gRPC https://$GRPC (mutual TLS)   HTTP http://$HTTP (/healthz, /metrics, /api/v1/alertmanager)
               data $STATE/coordinator   runbooks deploy/runbooks
  agent        node $NODE   diagnostics http://$DIAG (/healthz, /readyz, /metrics, /debug/state)
  certificates $PKI (a local CA; remedyctl acts as user:admin through $CTLCONFIG)

Try:
  export REMEDYCONFIG=$CTLCONFIG
  $BIN/remedyctl agents
  $BIN/remedyctl incidents --watch
  curl -s http://$DIAG/debug/state
  curl -s -XPOST http://$HTTP/api/v1/alertmanager -H 'Content-Type: application/json' \\
    -H "Authorization: Bearer \$(sed -n 's/.*token: //p' $WEBHOOK_TOKENS)" \\
    -d '{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"P1_HighErrorRate","severity":"warning"},"startsAt":"2026-01-01T00:00:00Z"}]}'
  curl -s -XPOST http://$DIAG/v1/findings -H "Authorization: Bearer \$(sed -n 's/.*token: //p' $TOKENS)" \\
    -d '[{"kind":"probe_failed","severity":"critical","target":"service/api","summary":"api /health failed"}]'
  $BIN/remedyctl findings -o wide
  $BIN/remedyctl audit
  $BIN/remedyctl runbooks validate deploy/runbooks

Ctrl-C stops both.
MSG

# Both binaries exit 0 only when asked to stop (Ctrl-C reaches the whole
# process group); anything else is a failure worth a non-zero status.
if wait -n "${pids[@]}"; then
	stop 0
fi
echo "a process exited with an error; stopping the other" >&2
stop 1
