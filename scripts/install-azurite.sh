#!/usr/bin/env bash
# Install and cache Azurite, Microsoft's Azure Storage emulator (an npm package), for the
# az:// tests. Prints the path of its blob-service command.
#
# Usage: scripts/install-azurite.sh
set -euo pipefail

AZURITE_VERSION=${AZURITE_VERSION:-3.37.0}

cache=${ICECHUNK_OPERATOR_CACHE:-$HOME/.cache/icechunk-operator}
root="$cache/azurite-$AZURITE_VERSION"
command_path="$root/node_modules/.bin/azurite-blob"

if [[ -x "$command_path" ]]; then echo "$command_path"; exit 0; fi

mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if [[ -x "$command_path" ]]; then echo "$command_path"; exit 0; fi
log() { echo "install-azurite: $*" >&2; }
command -v npm >/dev/null || { log "npm (Node.js) is required to install Azurite"; exit 1; }

started=$SECONDS
log "installing azurite $AZURITE_VERSION"
npm install --prefix "$root" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >&2
log "ready in $((SECONDS - started)) s: $command_path"
echo "$command_path"
