#!/usr/bin/env bash
# Build the binaries of a real Kubernetes control plane, without containers, and cache them.
#
# kube-apiserver, kube-controller-manager and kubectl come from the k8s.io/kubernetes Go module
# (through a wrapper module whose replace lines pin each staging module to its published
# version), etcd from its server module and kwok from its own; every binary is built by `go
# build` from the Go module proxy. The result lives under
# ${ICECHUNK_OPERATOR_CACHE:-~/.cache/icechunk-operator}/control-plane/<versions>/bin, so only
# the first run pays for the build (about 15 minutes on two cores); later runs print the path.
#
# Usage: scripts/build-control-plane.sh        # prints the bin directory on stdout
set -euo pipefail

KUBERNETES_VERSION=${KUBERNETES_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.6}
KWOK_VERSION=${KWOK_VERSION:-v0.7.0}

cache=${ICECHUNK_OPERATOR_CACHE:-$HOME/.cache/icechunk-operator}
BUILD_REVISION=2  # bump when the way binaries are built changes, so caches are rebuilt
root="$cache/control-plane/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-r$BUILD_REVISION"
bin="$root/bin"
binaries=(kube-apiserver kube-controller-manager kubectl etcd kwok)

all_built() {
    local name
    for name in "${binaries[@]}"; do [[ -x "$bin/$name" ]] || return 1; done
}

if all_built; then
    echo "$bin"
    exit 0
fi

command -v go >/dev/null || { echo "build-control-plane: Go is required (go 1.26+)" >&2; exit 1; }
mkdir -p "$bin" "$root/src"
exec 9>"$root/.lock"
flock 9
if all_built; then echo "$bin"; exit 0; fi

export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0

log() { echo "build-control-plane: $*" >&2; }

# shellcheck source=go-module-build.sh
source "$(dirname "$0")/go-module-build.sh"

started=$SECONDS
[[ -x "$bin/etcd" ]] || build_go_module etcd go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
[[ -x "$bin/kwok" ]] || build_go_module kwok sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
all_built || build_kubernetes_commands "$KUBERNETES_VERSION" kube-apiserver kube-controller-manager kubectl
log "built in $((SECONDS - started)) s into $bin"
echo "$bin"
