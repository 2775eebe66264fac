#!/usr/bin/env bash
# find-python.sh — print the absolute path of a CPython >= 3.14 interpreter.
#
# 3.14 because the built-in GNSS reader (canVODpy's canvod-readers) requires it.
#
# Contract: stdout gets exactly one line (the interpreter path) on success;
# everything else (progress, warnings, errors) goes to stderr. Exits non-zero
# with a message on stderr when no interpreter can be found or built.
#
# Search order:
#   1. $PYTHON, if set and >= 3.14
#   2. python3.14 on PATH (pyenv shims are verified by
#      actually running them: a shim exists even when its version is not
#      installed or not selected)
#   3. $PYENV_ROOT/versions/3.1[4-9]*/bin/python3, newest first
#   4. a previously built interpreter in the cache
#   5. build CPython 3.14 from Debian's python3.14 source package (forky, else
#      sid; the upstream orig tarball), using a private apt setup under the
#      cache so the system's apt configuration is never changed. Mirrors can
#      name a version in their signed index whose files are not in the pool
#      yet; then the newest older release the pool holds is taken, checked
#      against the SHA-256 in its own .dsc.
#
# Environment:
#   PYTHON                   preferred interpreter (name or path)
#   PYENV_ROOT               pyenv root (default ~/.pyenv)
#   ICECHUNK_OPERATOR_CACHE  cache dir (default ~/.cache/icechunk-operator)
#   FIND_PYTHON_FORCE_BUILD  if 1, skip steps 1-4 and (re)build into the cache
set -euo pipefail

readonly MIN_CHECK='import sys; print(sys.implementation.name == "cpython" and sys.version_info >= (3, 14))'
readonly CACHE_DIR="${ICECHUNK_OPERATOR_CACHE:-$HOME/.cache/icechunk-operator}"
readonly PREFIX="$CACHE_DIR/python"
readonly CACHED_PYTHON="$PREFIX/bin/python3.14"
readonly SOURCE_SUITES=(forky sid)
readonly SOURCE_PACKAGE="python3.14"
# Modules a usable interpreter must have; missing -dev headers at build time
# silently drop them, so they are checked after every build and on cache hits.
readonly REQUIRED_MODULES="ssl, sqlite3, lzma, bz2, zlib, ctypes"
# Build dependencies (tk-dev deliberately omitted: tkinter is not needed).
readonly BUILD_DEPS=(build-essential pkg-config xz-utils libssl-dev zlib1g-dev
  libbz2-dev libreadline-dev libsqlite3-dev libffi-dev liblzma-dev uuid-dev
  libgdbm-dev)

log() { printf 'find-python: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Print the interpreter's real absolute path if $1 is runnable CPython >= 3.14.
# Running it is the only reliable test: pyenv shims exist for versions that
# are not installed or not selected, and fail only when executed.
check_python() {
  local candidate=$1 ok exe
  ok=$("$candidate" -c "$MIN_CHECK" 2>/dev/null) || return 1
  [[ $ok == True ]] || return 1
  exe=$("$candidate" -c 'import sys; print(sys.executable)' 2>/dev/null) || return 1
  [[ $exe == /* && -x $exe ]] || return 1
  printf '%s\n' "$exe"
}

# Step 1: $PYTHON (may be a bare command name or a path).
from_env() {
  [[ -n ${PYTHON:-} ]] || return 1
  local resolved
  resolved=$(command -v -- "$PYTHON" 2>/dev/null) || { log "\$PYTHON=$PYTHON not found; ignoring"; return 1; }
  check_python "$resolved" || { log "\$PYTHON=$PYTHON does not run as CPython >= 3.14; ignoring"; return 1; }
}

# Step 2: versioned names on PATH, newest first.
from_path() {
  local name candidate
  for name in python3.14; do
    candidate=$(command -v -- "$name" 2>/dev/null) || continue
    check_python "$candidate" && return 0
  done
  return 1
}

# Step 3: pyenv-installed versions, bypassing shims (which only expose the
# selected version), newest first by version sort.
from_pyenv() {
  local root=${PYENV_ROOT:-$HOME/.pyenv} dir
  [[ -d $root/versions ]] || return 1
  while IFS= read -r dir; do
    [[ -x $dir/bin/python3 ]] || continue
    check_python "$dir/bin/python3" && return 0
  done < <(compgen -G "$root/versions/3.1[4-9]*" | sort -rV)
  return 1
}

# True if $1 imports all required modules (catches a half-built interpreter).
has_required_modules() {
  "$1" -c "import $REQUIRED_MODULES" 2>/dev/null
}

# Step 4: interpreter built by an earlier run of step 5.
from_cache() {
  [[ -x $CACHED_PYTHON ]] || return 1
  has_required_modules "$CACHED_PYTHON" || { log "cached $CACHED_PYTHON is incomplete; ignoring"; return 1; }
  check_python "$CACHED_PYTHON"
}

# ---------------------------------------------------------------------------
# Step 5 helpers: build from Debian's source package.
# ---------------------------------------------------------------------------

# Run a command as root: directly, or via passwordless sudo.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    die "need root to run: $* (install these yourself, then rerun)"
  fi
}

# Install only the build deps that are missing, so a warm machine does no apt
# work at all. The system's own package lists are refreshed only then, since
# on a fresh machine they may be empty or stale.
ensure_build_deps() {
  local pkg missing=()
  for pkg in "${BUILD_DEPS[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing missing build dependencies: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
    || die "apt-get update failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2 || die "apt-get install failed for: ${missing[*]}"
}

# The machine's Debian codename (bookworm, trixie, ...), used to recognise
# which configured sources are the main Debian archive.
host_codename() {
  local codename=""
  if [[ -r /etc/os-release ]]; then
    # shellcheck disable=SC1091
    codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
  fi
  printf '%s\n' "$codename"
}

# Print "URI SUITE" for every enabled deb/deb-src entry in the system's apt
# sources, in both one-line (.list) and deb822 (.sources) formats. Files with
# other extensions are ignored, exactly as apt ignores them.
configured_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f ]] || continue
    # Drop comments and "[ option=... ]" blocks, then take URI and suite.
    sed -e 's/#.*//' -e 's/\[[^]]*\]//g' "$f" |
      awk '$1 == "deb" || $1 == "deb-src" { if (NF >= 3) print $2, $3 }'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    awk '
      function flush(   nu, ns, i, j, u, s) {
        if (types ~ /(^|[ \t])deb(-src)?([ \t]|$)/ && tolower(enabled) != "no") {
          nu = split(uris, u, /[ \t]+/); ns = split(suites, s, /[ \t]+/)
          for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++)
            if (u[i] != "" && s[j] != "") print u[i], s[j]
        }
        types = uris = suites = enabled = ""; last = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/   { # continuation line of a multi-line field
        if (last == "types") types = types " " $0
        else if (last == "uris") uris = uris " " $0
        else if (last == "suites") suites = suites " " $0
        next
      }
      {
        key = tolower($0); sub(/:.*/, "", key)
        val = $0; sub(/^[^:]*:[ \t]*/, "", val)
        last = key
        if (key == "types") types = val
        else if (key == "uris") uris = val
        else if (key == "suites") suites = val
        else if (key == "enabled") enabled = val
      }
      END { flush() }
    ' "$f"
  done
}

# Print candidate Debian archive mirrors (one URI per line, best first):
# entries whose suite is exactly the host codename (not -security/-updates,
# which live on other archives or are partial), then other non-security
# entries for that codename. Third-party repos use their own suite names
# ("nodistro", "cloud-sdk-bookworm") and so never match.
debian_mirrors() {
  local codename
  codename=$(host_codename)
  [[ -n $codename ]] || die "cannot tell this machine's Debian codename from /etc/os-release"
  configured_sources | awk -v c="$codename" '
    $1 !~ /^https?:\/\// { next }
    { sub(/\/+$/, "", $1) }
    $2 == c || $2 == "stable" { print 1, NR, $1; next }
    index($2, c "-") == 1 && $2 !~ /security/ && $1 !~ /security/ { print 2, NR, $1 }
  ' | sort -k1,1n -k2,2n | awk '!seen[$3]++ { print $3 }'
}

# apt-get with a private configuration rooted at $1: its own sources list,
# lists, cache and state, so neither the system's sources nor its package
# lists are read or changed. Remaining args are passed to apt-get.
private_apt() {
  local root=$1
  shift
  apt-get -q \
    -o Dir::Etc::SourceList="$root/sources.list" \
    -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State="$root/state" \
    -o Dir::State::Lists="$root/lists" \
    -o Dir::State::status="$root/state/status" \
    -o Dir::Cache="$root/cache" \
    -o Acquire::Languages=none \
    -o APT::Sandbox::User=root \
    "$@"
}

# The newest orig tarball the pool really holds, for a source package whose
# index entry ($3 = Directory, $4 = Version) may be ahead of the pool: count
# the patch release down from the indexed one and take the first release whose
# .dsc and orig tarball both download, then check the tarball against the
# SHA-256 its .dsc names. Downloads into $2; prints the tarball's path.
fetch_from_pool() {
  local mirror=$1 dest=$2 directory=$3 version=$4 upstream major patch rev dsc tarball want got
  upstream=${version%%-*}
  major=${upstream%.*}
  patch=${upstream##*.}
  [[ $patch =~ ^[0-9]+$ ]] || return 1
  for ((; patch >= 0; patch--)); do
    for rev in 1 2 3; do
      dsc="${SOURCE_PACKAGE}_${major}.${patch}-${rev}.dsc"
      curl -fsS -m 60 -o "$dest/$dsc" "$mirror/$directory/$dsc" 2>/dev/null || continue
      tarball="${SOURCE_PACKAGE}_${major}.${patch}.orig.tar.xz"
      want=$(awk -v f="$tarball" '/^Checksums-Sha256:/ {on=1; next} /^[^ ]/ {on=0} on && $3 == f {print $1}' "$dest/$dsc")
      [[ -n $want ]] || { log "$dsc names no $tarball"; continue; }
      log "the pool lacks $version; taking ${major}.${patch}-${rev}"
      curl -fsS -m 900 -o "$dest/$tarball" "$mirror/$directory/$tarball" || { log "could not fetch $tarball"; continue; }
      got=$(sha256sum "$dest/$tarball" | cut -d' ' -f1)
      [[ $got == "$want" ]] || die "$tarball: SHA-256 $got differs from $want in $dsc"
      printf '%s\n' "$dest/$tarball"
      return 0
    done
  done
  return 1
}

# Directory and Version of $SOURCE_PACKAGE in the private lists' Sources index.
indexed_source() {
  local root=$1 index
  # apt keeps the index compressed (.lz4, .gz, ...); its helper reads any of them.
  for index in "$root"/lists/*_Sources*; do
    [[ -r $index ]] || continue
    /usr/lib/apt/apt-helper cat-file "$index" | awk -v p="$SOURCE_PACKAGE" '
      /^Package:/ {hit = ($2 == p)} hit && /^Directory:/ {d = $2} hit && /^Version:/ {v = $2}
      /^$/ && hit && d != "" && v != "" {print d, v; exit}
      END {if (hit && d != "" && v != "") print d, v}' | head -n1
    return 0
  done
}

# Download the python3.14 upstream orig tarball into $1 and print its path.
# Tries each configured Debian mirror and each source suite until one works.
fetch_source() {
  local dest=$1 apt_root="$CACHE_DIR/apt" mirror suite tarball entry
  mkdir -p "$apt_root/state" "$apt_root/lists/partial" "$apt_root/cache/archives/partial" "$dest"
  : >"$apt_root/state/status"

  local mirrors=()
  mapfile -t mirrors < <(debian_mirrors)
  ((${#mirrors[@]} > 0)) || die "no Debian mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d/"

  for mirror in "${mirrors[@]}"; do
    for suite in "${SOURCE_SUITES[@]}"; do
      log "fetching $SOURCE_PACKAGE source from $mirror ($suite)"
      rm -f "$apt_root"/lists/*_Sources*
      printf 'deb-src %s %s main\n' "$mirror" "$suite" >"$apt_root/sources.list"
      if ! private_apt "$apt_root" update >&2; then
        log "apt-get update against $mirror $suite failed; trying next"
        continue
      fi
      # --download-only: no dpkg-source needed, and apt verifies the files
      # against the signed Sources index.
      if (cd "$dest" && private_apt "$apt_root" source --download-only "$SOURCE_PACKAGE" >&2); then
        tarball=$(compgen -G "$dest/${SOURCE_PACKAGE}_*.orig.tar.xz" | sort -V | tail -n1) || true
        [[ -n $tarball ]] && { printf '%s\n' "$tarball"; return 0; }
        log "no ${SOURCE_PACKAGE}_*.orig.tar.xz among the downloaded files"
      fi
      entry=$(indexed_source "$apt_root")
      if [[ -n $entry ]]; then
        # shellcheck disable=SC2086
        fetch_from_pool "$mirror" "$dest" $entry && return 0
      fi
      log "no $SOURCE_PACKAGE source from $mirror $suite; trying next"
    done
  done
  die "could not download the $SOURCE_PACKAGE source package from any mirror"
}

# Check a freshly built interpreter the way the project will use it.
verify_build() {
  local py=$1 venv_dir
  has_required_modules "$py" || die "built $py is missing one of: $REQUIRED_MODULES"
  venv_dir=$(mktemp -d)
  if ! "$py" -m venv "$venv_dir/venv" >&2; then
    rm -rf "$venv_dir"
    die "built $py cannot create a venv"
  fi
  rm -rf "$venv_dir"
}

# Step 5: build CPython 3.14 into $PREFIX. Output of configure/make goes to a
# log file (its tail is shown on failure) to keep stderr readable.
build_python() {
  ensure_build_deps

  local work="$CACHE_DIR/build" build_log="$CACHE_DIR/build.log" tarball srcdir stage start
  start=$SECONDS
  rm -rf "$work"
  mkdir -p "$work"
  tarball=$(fetch_source "$work/src")

  log "unpacking $(basename "$tarball")"
  tar -xJf "$tarball" -C "$work"
  srcdir=$(compgen -G "$work/Python-3.14*" | head -n1) || true
  [[ -n $srcdir && -d $srcdir ]] || die "unexpected layout in $tarball (no Python-3.14* dir)"

  # Install into a staging tree first and move it into place at the end, so
  # an interrupted build never leaves a half-installed interpreter at $PREFIX.
  stage="$work/stage"
  log "building $(basename "$srcdir") with $(nproc) jobs (log: $build_log)"
  if ! (
    cd "$srcdir"
    # No --enable-optimizations (PGO triples the build time); keep ensurepip
    # so `python -m venv` bootstraps pip.
    ./configure --prefix="$PREFIX" --with-ensurepip=install
    make -j"$(nproc)"
    make altinstall DESTDIR="$stage"
  ) >"$build_log" 2>&1; then
    tail -n 40 "$build_log" >&2
    die "CPython build failed; full log in $build_log"
  fi

  rm -rf "$PREFIX"
  mkdir -p "$(dirname "$PREFIX")"
  mv "$stage$PREFIX" "$PREFIX"
  verify_build "$CACHED_PYTHON"
  # Sources and the private package lists are only needed for a rebuild,
  # which fetches them afresh anyway.
  rm -rf "$work" "$CACHE_DIR/apt"
  log "built $CACHED_PYTHON in $((SECONDS - start))s"
}

# Steps 4-5 under an exclusive lock on the cache dir: a concurrent run waits,
# then finds the interpreter the first one built instead of building again.
cached_or_build() {
  mkdir -p "$CACHE_DIR"
  exec 9>"$CACHE_DIR/.build.lock"
  if ! flock -n 9; then
    log "another run is building in $CACHE_DIR; waiting for it"
    flock 9
  fi
  if [[ ${FIND_PYTHON_FORCE_BUILD:-0} != 1 ]]; then
    # Re-check under the lock: the run we waited for may have built it.
    from_cache && return 0
  fi
  command -v apt-get >/dev/null 2>&1 \
    || die "no CPython >= 3.14 found, and no apt-get to build one (set \$PYTHON or install Python >= 3.14)"
  log "no CPython >= 3.14 found; building 3.14 from Debian ${SOURCE_SUITES[*]} sources (takes a few minutes)"
  build_python
  check_python "$CACHED_PYTHON" || die "built interpreter $CACHED_PYTHON does not run"
}

main() {
  if [[ ${FIND_PYTHON_FORCE_BUILD:-0} == 1 ]]; then
    # Forced: skip steps 1-4. A concurrent forced run that waited on the lock
    # still rebuilds; that is acceptable for a testing switch.
    log "FIND_PYTHON_FORCE_BUILD=1: skipping interpreter search"
    cached_or_build
    return
  fi
  from_env || from_path || from_pyenv || cached_or_build
}

main "$@"
