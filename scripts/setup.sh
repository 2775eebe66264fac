#!/usr/bin/env bash
# Set up a development/run environment from nothing: a Python >= 3.14 (found or built),
# the virtual environment in .venv, and the project installed with its pinned dependencies.
# Safe to run again: a warm machine does no network work.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${ICECHUNK_OPERATOR_CACHE:-$HOME/.cache/icechunk-operator}"
mkdir -p "$cache" build

# One setup at a time in this checkout: make test's background builds call it too.
exec 9>build/.setup.lock
flock 9

venv_ok() {
  [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 14))'
}

if ! venv_ok; then
  python="$(scripts/find-python.sh)"
  echo "setup: creating .venv with $python" >&2
  rm -rf .venv
  "$python" -m venv .venv
fi

# Reinstall only when the dependency pins or the project metadata changed.
stamp=".venv/.installed-$(cat pyproject.toml requirements-dev.lock | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/uv ] || .venv/bin/python -m pip install --quiet --disable-pip-version-check uv
  echo "setup: installing the project and its pinned dependencies" >&2
  UV_CACHE_DIR="$cache/uv" .venv/bin/uv pip install --quiet --python .venv/bin/python \
    -c requirements-dev.lock -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
