#!/usr/bin/env bash
# Build and cache the tools that check the Helm chart without a container engine:
# helm (a Go module, built with `go build`), checkov (PyPI, in its own virtual
# environment so its dependencies never meet the project's). Prints the bin directory.
#
# Usage: scripts/build-chart-tools.sh
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v3.22.0}

CHECKOV_VERSION=${CHECKOV_VERSION:-3.3.30}

cache=${ICECHUNK_OPERATOR_CACHE:-$HOME/.cache/icechunk-operator}
root="$cache/chart-tools/helm-$HELM_VERSION-checkov-$CHECKOV_VERSION"
bin="$root/bin"
repo=$(cd "$(dirname "$0")/.." && pwd)

all_built() { [[ -x "$bin/helm" && -x "$bin/checkov" ]]; }
if all_built; then echo "$bin"; exit 0; fi

mkdir -p "$bin" "$root/src"
exec 9>"$root/.lock"
flock 9
if all_built; then echo "$bin"; exit 0; fi
log() { echo "build-chart-tools: $*" >&2; }
export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0

# shellcheck source=go-module-build.sh
source "$(dirname "$0")/go-module-build.sh"

started=$SECONDS
build_go_module helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm "$HELM_VERSION"

if [[ ! -x "$bin/checkov" ]]; then
    log "installing checkov $CHECKOV_VERSION"
    python=$("$repo/scripts/find-python.sh")
    "$python" -m venv "$root/checkov-venv"
    uv="$repo/.venv/bin/uv"
    if [[ -x "$uv" ]]; then
        UV_CACHE_DIR="$cache/uv" "$uv" pip install --python "$root/checkov-venv/bin/python" -q "checkov==$CHECKOV_VERSION"
    else
        "$root/checkov-venv/bin/pip" install -q "checkov==$CHECKOV_VERSION"
    fi
    ln -sf "$root/checkov-venv/bin/checkov" "$bin/checkov"
fi
log "ready in $((SECONDS - started)) s: $bin"
echo "$bin"
