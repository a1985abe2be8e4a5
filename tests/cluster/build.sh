#!/usr/bin/env bash
# Builds the control-plane binaries the Rust test harness starts (etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok)
# from Go modules, and caches them by version outside the repository:
#
#   ${REMEDY_CLUSTER_BIN_DIR:-$HOME/.cache/remedy/cluster-bins}/<k8s-version>/
#
# Idempotent: when the binaries for the pinned versions are already there it
# exits 0 at once. Any failure exits non-zero with a message on stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$HERE/versions.env"

BIN_ROOT=${REMEDY_CLUSTER_BIN_DIR:-$HOME/.cache/remedy/cluster-bins}
OUT=$BIN_ROOT/$K8S_VERSION
BINS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)
# Bump BUILD_FORMAT when the way binaries are built changes, so caches rebuild.
BUILD_FORMAT=1
STAMP_WANT="format=$BUILD_FORMAT k8s=$K8S_VERSION etcd=$ETCD_VERSION kwok=$KWOK_VERSION"

die() {
	echo "cluster-bins: ERROR: $*" >&2
	exit 1
}
log() { echo "cluster-bins: $*" >&2; }

is_complete() {
	[[ -f $OUT/STAMP && "$(cat "$OUT/STAMP")" == "$STAMP_WANT" ]] || return 1
	local b
	for b in "${BINS[@]}"; do [[ -x $OUT/$b ]] || return 1; done
	[[ -n "$(ls "$OUT"/kwok-stages/*.yaml 2>/dev/null)" ]] || return 1
}

if is_complete; then
	log "up to date in $OUT"
	exit 0
fi

command -v go >/dev/null 2>&1 ||
	die "no Go toolchain on PATH: install Go >= 1.26 (the modules built here need it)"
GOVERSION=$(go env GOVERSION) || die "'go env GOVERSION' failed"
go_minor=$(sed -n 's/^go1\.\([0-9]*\).*/\1/p' <<<"$GOVERSION")
[[ -n $go_minor && $go_minor -ge 26 ]] ||
	die "Go $GOVERSION is too old: Go >= 1.26 is needed (etcd $ETCD_VERSION and kwok $KWOK_VERSION declare go 1.26)"
command -v flock >/dev/null 2>&1 || die "flock (util-linux) is needed"

mkdir -p "$BIN_ROOT"
exec 9>"$BIN_ROOT/.lock"
flock 9
# Another build may have finished while this one waited for the lock.
if is_complete; then
	log "up to date in $OUT"
	exit 0
fi

start=$(date +%s)
WORK=$BIN_ROOT/.work/$K8S_VERSION
PARTIAL=$OUT.partial
rm -rf "$WORK" "$PARTIAL"
mkdir -p "$WORK" "$PARTIAL/kwok-stages"

export GOFLAGS="-buildvcs=false -mod=mod"
export CGO_ENABLED=0
export GOTOOLCHAIN=local

# Prints the value of a string field of `go mod download -json MOD@VER`.
mod_field() {
	local json=$1 field=$2
	sed -n "s/^[[:space:]]*\"$field\": \"\\(.*\\)\",\\{0,1\\}\$/\\1/p" <<<"$json" | head -n1
}

download_json() {
	local json
	json=$(cd "$WORK" && go mod download -json "$1" 2>&1) ||
		die "the Go module proxy did not serve $1: $json"
	grep -q '"Error"' <<<"$json" && die "the Go module proxy did not serve $1: $json"
	printf '%s\n' "$json"
}

# Lays out a wrapper module: tools.go from the repository plus a go.mod.
new_module() {
	local name=$1 dir=$WORK/$1
	mkdir -p "$dir"
	cp "$HERE/$name/tools.go" "$dir/"
	printf '%s\n' "$dir"
}

# ---------------------------------------------------------------- etcd
log "building etcd $ETCD_VERSION"
etcd_json=$(download_json "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
etcd_sha=$(mod_field "$etcd_json" Hash | cut -c1-12)
dir=$(new_module etcd)
cat >"$dir/go.mod" <<EOF
module remedy.test/cluster-bins/etcd

go 1.26.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
(cd "$dir" && go mod tidy) || die "go mod tidy failed for etcd $ETCD_VERSION"
(cd "$dir" && go build -trimpath \
	-ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${etcd_sha:-unknown}" \
	-o "$PARTIAL/etcd" go.etcd.io/etcd/server/v3) || die "building etcd $ETCD_VERSION failed"

# ---------------------------------------------------------------- kwok
log "building kwok $KWOK_VERSION"
download_json "sigs.k8s.io/kwok@$KWOK_VERSION" >/dev/null
dir=$(new_module kwok)
cat >"$dir/go.mod" <<EOF
module remedy.test/cluster-bins/kwok

go 1.26.0

require sigs.k8s.io/kwok $KWOK_VERSION
EOF
(cd "$dir" && go mod tidy) || die "go mod tidy failed for kwok $KWOK_VERSION"
(cd "$dir" && go build -trimpath \
	-ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
	-o "$PARTIAL/kwok" sigs.k8s.io/kwok/cmd/kwok) || die "building kwok $KWOK_VERSION failed"
# The stage definitions kwok applies to nodes and pods: the "fast" set
# (nodes become Ready at once and keep a heartbeat lease; pods go Running).
kwok_src=$(cd "$dir" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok) || die "cannot locate kwok sources"
for stage in node/fast node/heartbeat-with-lease pod/fast; do
	src=$kwok_src/kustomize/stage/$stage
	[[ -d $src ]] || die "kwok $KWOK_VERSION has no stage directory kustomize/stage/$stage"
	for f in "$src"/*.yaml; do
		[[ $(basename "$f") == kustomization.yaml ]] && continue
		cp "$f" "$PARTIAL/kwok-stages/"
	done
done
chmod -R u+w "$PARTIAL/kwok-stages"

# ---------------------------------------------------------- kubernetes
log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $K8S_VERSION"
k8s_json=$(download_json "k8s.io/kubernetes@$K8S_VERSION")
k8s_gomod=$(mod_field "$k8s_json" GoMod)
[[ -f $k8s_gomod ]] || die "no go.mod for k8s.io/kubernetes@$K8S_VERSION in the module cache"
k8s_commit=$(mod_field "$k8s_json" Hash)
k8s_time=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "${k8s_gomod%.mod}.info" 2>/dev/null | head -n1)

if [[ ! $K8S_VERSION =~ ^v1\.([0-9]+)\.([0-9]+)$ ]]; then
	die "K8S_VERSION must look like v1.MINOR.PATCH, not $K8S_VERSION"
fi
k8s_minor=${BASH_REMATCH[1]}
staging_version=v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}

# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them
# with ./staging/... paths, which do not exist outside its repository. The
# wrapper replaces every one of them that is required with the published
# module of the same release.
mapfile -t staging < <(awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$k8s_gomod")
[[ ${#staging[@]} -gt 0 ]] || die "found no staging replaces in $k8s_gomod"
go_line=$(grep -m1 '^go ' "$k8s_gomod")
godebug_lines=$(grep '^godebug ' "$k8s_gomod" || true)
dir=$(new_module k8s)
{
	echo "module remedy.test/cluster-bins/k8s"
	echo
	echo "$go_line"
	[[ -n $godebug_lines ]] && printf '\n%s\n' "$godebug_lines"
	echo
	echo "require k8s.io/kubernetes $K8S_VERSION"
	echo
	echo "replace ("
	for m in "${staging[@]}"; do
		if grep -qE "^[[:space:]]+${m//./\\.} v0\.0\.0([[:space:]]|$)" "$k8s_gomod"; then
			echo "	$m => $m $staging_version"
		fi
	done
	echo ")"
} >"$dir/go.mod"
(cd "$dir" && go mod tidy) || die "go mod tidy failed for k8s.io/kubernetes $K8S_VERSION (see $dir/go.mod)"

ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
	ldflags+=" -X $pkg.gitVersion=$K8S_VERSION"
	ldflags+=" -X $pkg.gitMajor=1"
	ldflags+=" -X $pkg.gitMinor=$k8s_minor"
	ldflags+=" -X $pkg.gitCommit=${k8s_commit:-unknown}"
	ldflags+=" -X $pkg.gitTreeState=clean"
	ldflags+=" -X $pkg.buildDate=${k8s_time:-1970-01-01T00:00:00Z}"
done
(cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$PARTIAL/" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler \
	k8s.io/kubernetes/cmd/kubectl) || die "building Kubernetes $K8S_VERSION failed"

for b in "${BINS[@]}"; do
	[[ -x $PARTIAL/$b ]] || die "the build did not produce $b"
done
"$PARTIAL/kube-apiserver" --version | grep -qx "Kubernetes $K8S_VERSION" ||
	die "kube-apiserver reports '$("$PARTIAL/kube-apiserver" --version)', not Kubernetes $K8S_VERSION"

elapsed=$(($(date +%s) - start))
{
	echo "$STAMP_WANT"
	echo "go=$GOVERSION built_in_seconds=$elapsed"
} >"$PARTIAL/BUILD_INFO"
cp "$WORK/k8s/go.mod" "$PARTIAL/k8s.go.mod"
echo "$STAMP_WANT" >"$PARTIAL/STAMP"
rm -rf "$OUT"
mv "$PARTIAL" "$OUT"
rm -rf "$WORK"
log "built in ${elapsed}s into $OUT ($(du -sh "$OUT" | cut -f1))"
