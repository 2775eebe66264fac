#!/usr/bin/env bash
# Build and cache one of the Go tools the storage tests and benchmarks run, from its Go module
# (through the same throw-away wrapper module as the control plane), and print its path:
#
#   toxiproxy  the TCP proxy that puts latency and faults between clients and storage servers
#              (this kernel has no netem); about 15 s once
#   versitygw  Versity's S3 gateway on a local folder: a fast S3-compatible server with
#              conditional writes, for the cloud benchmark; about 2 minutes once
#   fake-gcs-server  an emulator of Google Cloud Storage's JSON and XML APIs, the only server the
#              gs:// tests have (docs/gcs-emulator.md says what it serves); about 2 minutes once
#
# Usage: scripts/build-go-tool.sh toxiproxy|versitygw|fake-gcs-server
set -euo pipefail

name=${1:?usage: build-go-tool.sh toxiproxy|versitygw|fake-gcs-server}
case $name in
    toxiproxy)
        version=${TOXIPROXY_VERSION:-v2.12.0}
        module=github.com/Shopify/toxiproxy/v2 package=github.com/Shopify/toxiproxy/v2/cmd/server ;;
    versitygw)
        version=${VERSITYGW_VERSION:-v1.8.0}
        module=github.com/versity/versitygw package=github.com/versity/versitygw/cmd/versitygw ;;
    fake-gcs-server)
        version=${FAKE_GCS_SERVER_VERSION:-v1.56.1}
        module=github.com/fsouza/fake-gcs-server package=github.com/fsouza/fake-gcs-server ;;
    *) echo "build-go-tool: unknown tool $name" >&2; exit 2 ;;
esac

cache=${ICECHUNK_OPERATOR_CACHE:-$HOME/.cache/icechunk-operator}
root="$cache/go-tools/$name-$version"
bin="$root/bin"

if [[ -x "$bin/$name" ]]; then echo "$bin/$name"; exit 0; fi

mkdir -p "$bin" "$root/src"
exec 9>"$root/.lock"
flock 9
if [[ -x "$bin/$name" ]]; then echo "$bin/$name"; exit 0; fi
log() { echo "build-go-tool: $*" >&2; }
export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0

# shellcheck source=go-module-build.sh
source "$(dirname "$0")/go-module-build.sh"

started=$SECONDS
build_go_module "$name" "$module" "$package" "$version"
log "$name ready in $((SECONDS - started)) s"
echo "$bin/$name"
