#!/usr/bin/env bash
# Everything a real Kubernetes node needs besides the control plane, without a container engine
# installed beforehand, cached like the control plane.
#
# From Debian's packages (installed with apt-get when missing; the tests run as root): containerd
# and runc (the container runtime), containernetworking-plugins (bridge, host-local, loopback,
# portmap), iptables and conntrack (kube-proxy's Service rules) and mmdebstrap (the image's root
# filesystem, see scripts/build-image.sh). From Go modules, through the Go module proxy: kubelet,
# kube-proxy and kube-scheduler (k8s.io/kubernetes, the control plane's release; the fake-kubelet
# tier binds pods itself) and CoreDNS (cluster DNS). The
# binaries live under ${ICECHUNK_OPERATOR_CACHE:-~/.cache/icechunk-operator}/node/<versions>/bin;
# the first run pays for the build (about 10 minutes on two cores), later runs print the path.
#
# Usage: scripts/build-node.sh        # prints the bin directory on stdout
set -euo pipefail

KUBERNETES_VERSION=${KUBERNETES_VERSION:-v1.36.3}
COREDNS_VERSION=${COREDNS_VERSION:-v1.14.7}
DEBIAN_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack mmdebstrap)

cache=${ICECHUNK_OPERATOR_CACHE:-$HOME/.cache/icechunk-operator}
BUILD_REVISION=1  # bump when the way binaries are built changes, so caches are rebuilt
root="$cache/node/k8s-$KUBERNETES_VERSION-coredns-$COREDNS_VERSION-r$BUILD_REVISION"
bin="$root/bin"
binaries=(kubelet kube-proxy kube-scheduler coredns)

log() { echo "build-node: $*" >&2; }

install_debian_packages() {
    local missing=() package
    for package in "${DEBIAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    [[ ${#missing[@]} -eq 0 ]] && return
    [[ $(id -u) -eq 0 ]] || { log "needs root to install ${missing[*]} (apt-get)"; exit 1; }
    log "installing ${missing[*]} from Debian's packages"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

all_built() {
    local name
    for name in "${binaries[@]}"; do [[ -x "$bin/$name" ]] || return 1; done
}

install_debian_packages
if all_built; then
    echo "$bin"
    exit 0
fi

command -v go >/dev/null || { log "Go is required (go 1.26+)"; exit 1; }
mkdir -p "$bin" "$root/src"
exec 9>"$root/.lock"
flock 9
if all_built; then echo "$bin"; exit 0; fi

# shellcheck source=go-module-build.sh
source "$(dirname "$0")/go-module-build.sh"

started=$SECONDS
[[ -x "$bin/coredns" ]] || build_go_module coredns github.com/coredns/coredns github.com/coredns/coredns "$COREDNS_VERSION"
all_built || build_kubernetes_commands "$KUBERNETES_VERSION" kubelet kube-proxy kube-scheduler
log "built in $((SECONDS - started)) s into $bin"
echo "$bin"
