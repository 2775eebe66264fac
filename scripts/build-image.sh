#!/usr/bin/env bash
# Build the project's image without Docker and without a registry, as OCI image layout tarballs
# that containerd imports (`ctr -n k8s.io images import <tar>`), and cache them.
#
# Usage:
#   scripts/build-image.sh          # both images: stdout's last two lines are the pause image's
#                                   # tarball, then (last line) the project image's tarball
#   scripts/build-image.sh image    # the project's image only (last line: its tarball)
#   scripts/build-image.sh pause    # the pause image only (last line: its tarball)
#
# The project's image, docker.io/library/icechunk-operator:<appVersion> (the Helm chart's default
# image: values.yaml image.repository, tag = Chart.yaml appVersion), is what
# worker_image/Dockerfile builds with Docker, made from other parts:
#   - base layer: `mmdebstrap --variant=minbase` of this machine's Debian release from this
#     machine's apt sources, with the runtime libraries of the project's CPython 3.14
#     (scripts/find-python.sh builds it, prefix-relocatable, into the cache) copied into /usr/local
#     instead of the python:3.14-slim base image; /opt/venv made with it and every package of
#     worker_image/requirements.lock installed --no-deps from a wheelhouse made here (sbf-parser,
#     which has no 3.14 wheel, compiled into a wheel here); the Dockerfile's final-stage RUN lines
#     executed in it. Cached by a hash of the lock, the Dockerfile, these scripts, the interpreter
#     and the apt sources; the first build takes a few minutes.
#   - app layer: the project (pyproject.toml, README.md, operator/) installed into /opt/venv by
#     the image's own pip and compiled, as the Dockerfile does. Rebuilt in seconds whenever the
#     project's sources change; the base layer is not.
#   - config: Env, User, WorkingDir, Cmd, Entrypoint from the Dockerfile's final stage.
# The pause image, localhost/icechunk-operator/pause:1, is worker_image/pause.c built with
# `gcc -static -Os`: the sandbox image for a node that cannot pull registry.k8s.io/pause.
#
# Needs root (mmdebstrap's root mode, chroot) for the project's image, plus mmdebstrap, gcc and
# the host's python3 (3.11+; it runs scripts/oci_image.py, standard library only). Everything
# lives under ${ICECHUNK_OPERATOR_CACHE:-~/.cache/icechunk-operator}/image; progress goes to
# stderr. SOURCE_DATE_EPOCH (default below) is every file's mtime in the layers.
set -euo pipefail
shopt -s inherit_errexit  # a failing command inside $(...) fails the build too

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
self="$repo/scripts/build-image.sh"
helper="$repo/scripts/oci_image.py"
dockerfile="$repo/worker_image/Dockerfile"
lock="$repo/worker_image/requirements.lock"
cache=${ICECHUNK_OPERATOR_CACHE:-$HOME/.cache/icechunk-operator}
root="$cache/image"
epoch=${SOURCE_DATE_EPOCH:-1704067200}  # 2024-01-01T00:00:00Z
default_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# What python:3.14-slim gives besides Python: CA certificates, /etc/services and friends, time
# zones, useradd; then the libraries the interpreter's extension modules link (checked with ldd
# after the build, so a missing one fails here, not in a pod).
packages=(ca-certificates netbase tzdata passwd
    libssl3 libffi8 libsqlite3-0 libbz2-1.0 liblzma5 libexpat1 libgdbm6 libncursesw6 libreadline8
    libuuid1 zlib1g)
# Left out of the image's copy of the interpreter: the test suite, IDLE, Tk, the static
# libpython and headers (nothing is compiled in the image), the interpreter's own site-packages
# (pip lives in /opt/venv, as in the Dockerfile); ensurepip stays, so `python -m venv` works.
python_excludes=(test idlelib tkinter turtledemo turtle.py 'config-3.*' __pycache__ 'site-packages/*'
    'lib-dynload/_test*' 'lib-dynload/xx*' 'lib-dynload/_xxtestfuzz*' 'lib-dynload/_ctypes_test*'
    'lib-dynload/_tkinter*')

log() { echo "build-image: $*" >&2; }
die() { log "error: $*"; exit 1; }

# True if anything is mounted at or below $1 (rm -rf must never descend into a bind of /dev).
mounted_under() {
    awk -v p="$1/" 'index($5 "/", p) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo
}

safe_rm() {
    local path
    for path; do
        [[ -e $path || -L $path ]] || continue
        if mounted_under "$path"; then
            log "not removing $path: something is still mounted under it"
            continue
        fi
        rm -rf --one-file-system "$path"
    done
}

cleanup_paths=()
base_env=()       # build_image: what the base image's config provides
pause_tar=""      # build_pause's result
image_tar=""      # build_image's result
cleanup() { ((${#cleanup_paths[@]} == 0)) || safe_rm "${cleanup_paths[@]}"; }

# Sets $work to a new directory under the cache, removed on exit unless moved into place.
make_work_dir() {
    work=$(mktemp -d "$root/work.XXXXXX")
    chmod 755 "$work"
    cleanup_paths+=("$work")
}

# A layer: an uncompressed tar of $1 (or of the paths $3... inside it), sorted, numeric owners,
# every mtime clamped to $epoch, no device nodes or kernel file systems.
layer_tar() {
    local dir=$1 out=$2
    shift 2
    ((${#@})) || set -- .
    tar --create --file="$out" --directory="$dir" --sort=name --format=pax \
        --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        --numeric-owner --mtime="@$epoch" --clamp-mtime \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' "$@"
}

digest_of() { printf 'sha256:%s\n' "$(sha256sum "$1" | cut -d' ' -f1)"; }

# The project's CPython: the prefix-relocatable build in the cache (find-python.sh builds it
# there when it is missing). A pyenv or system interpreter is not taken: it may link a shared
# libpython or libraries this Debian release lacks.
image_python() {
    local py="$cache/python/bin/python3.14"
    if ! { [[ -x $py ]] && "$py" -c 'import ssl, sqlite3, lzma, bz2, zlib, ctypes' 2>/dev/null; }; then
        log "no usable $py; building it (scripts/find-python.sh)"
        py=$(FIND_PYTHON_FORCE_BUILD=1 "$repo/scripts/find-python.sh" | tail -n1)
    fi
    if ldd "$py" | grep -q libpython; then
        die "$py links a shared libpython; the image needs the static, prefix-relocatable build"
    fi
    printf '%s\n' "$py"
}

# Every locked distribution as a wheel for this interpreter: downloaded, except sbf-parser,
# which publishes no 3.14 wheel and is compiled here (exactly the Dockerfile's pip options).
ensure_wheelhouse() {
    local py=$1 key dir
    key=$({ cat "$lock"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
    dir="$root/wheelhouse-$key"
    if [[ ! -f $dir/.complete ]]; then
        safe_rm "$dir"
        mkdir -p "$dir"
        log "collecting the locked wheels into $dir (sbf-parser compiled here)"
        "$py" -m pip wheel --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
            --no-binary=sbf-parser --cache-dir "$root/pip-cache" -r "$lock" -w "$dir" >&2
        touch "$dir/.complete"
    fi
    printf '%s\n' "$dir"
}

# The project's build backend (pyproject.toml [build-system] requires) as wheels, so the image's
# pip builds the project offline, as `pip install /src` does in the Dockerfile.
ensure_buildtools() {
    local py=$1 key dir
    local requires=()
    mapfile -t requires < <(python3 "$helper" build-requires "$repo/pyproject.toml")
    key=$(printf '%s\n' "${requires[@]}" | sha256sum | cut -c1-16)
    dir="$root/buildtools-$key"
    if [[ ! -f $dir/.complete ]]; then
        safe_rm "$dir"
        mkdir -p "$dir"
        log "downloading the build backend (${requires[*]}) into $dir"
        "$py" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
            --cache-dir "$root/pip-cache" -d "$dir" "${requires[@]}" >&2
        touch "$dir/.complete"
    fi
    printf '%s\n' "$dir"
}

# Run a command in the image's root file system with a clean environment.
in_root() {
    local rootfs=$1
    shift
    chroot "$rootfs" /usr/bin/env -i PATH="$default_path" HOME=/root LANG=C.UTF-8 \
        PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 "$@"
}

# mmdebstrap's customize hook (this script run again, as `build-image.sh customize-rootfs DIR`):
# mmdebstrap has mounted /proc, /sys and /dev in DIR; the IMAGE_BUILD_* variables come from
# build_base_layer.
customize_rootfs() {
    local rootfs=$1 prefix=${IMAGE_BUILD_PYTHON_PREFIX:?} pyver=${IMAGE_BUILD_PYVER:?}
    local wheelhouse=${IMAGE_BUILD_WHEELHOUSE:?} exclude=() pattern missing base_env=()
    mapfile -t base_env <<<"${IMAGE_BUILD_BASE_ENV:?}"
    log "copying the interpreter from $prefix into /usr/local"
    for pattern in "${python_excludes[@]}"; do
        exclude+=("--exclude=lib/python$pyver/$pattern")
    done
    tar --create --directory="$prefix" --owner=0 --group=0 --numeric-owner "${exclude[@]}" \
        --exclude=__pycache__ "bin/python$pyver" "lib/python$pyver" |
        tar --extract --directory="$rootfs/usr/local"
    mkdir -p "$rootfs/usr/local/lib/python$pyver/site-packages"
    ln -s "python$pyver" "$rootfs/usr/local/bin/python3"
    ln -s python3 "$rootfs/usr/local/bin/python"

    log "creating /opt/venv and installing worker_image/requirements.lock into it"
    in_root "$rootfs" python -m venv /opt/venv
    cp -a "$wheelhouse" "$rootfs/tmp/wheelhouse"
    cp "$lock" "$rootfs/tmp/requirements.lock"
    in_root "$rootfs" /opt/venv/bin/pip install --quiet --no-deps --no-index --only-binary=:all: \
        --no-compile --find-links /tmp/wheelhouse -r /tmp/requirements.lock >&2
    in_root "$rootfs" find /opt/venv -name tests -type d -path "*site-packages/*" -prune -exec rm -rf {} +
    rm -rf "$rootfs/tmp/wheelhouse" "$rootfs/tmp/requirements.lock"

    log "running the Dockerfile's final-stage RUN lines"
    python3 "$helper" run-final-stage "$rootfs" "$dockerfile" "${base_env[@]/#/--base-env=}" >&2

    # Sources get their final mtime before compiling, so the .pyc files stay valid in the layer.
    log "compiling the standard library and /opt/venv"
    find "$rootfs/usr/local" "$rootfs/opt" -exec touch -h -d "@$epoch" {} +
    in_root "$rootfs" python -m compileall -q "/usr/local/lib/python$pyver" >&2
    in_root "$rootfs" /opt/venv/bin/python -m compileall -q /opt/venv >&2

    log "checking every extension module's libraries"
    missing=$(in_root "$rootfs" /bin/sh -c '
        find /usr/local /opt/venv -type f -name "*.so*" | while read -r f; do
            ldd "$f" 2>/dev/null | sed -n "s|^[[:space:]]*\([^[:space:]]*\) => not found|$f: \1|p"
        done')
    [[ -z $missing ]] || die "libraries missing in the image (add their packages above):"$'\n'"$missing"
    rm -rf "$rootfs/root/.cache"
}

# The base layer: root file system (kept, for the app layer's build) and its tar.
build_base_layer() {
    local py=$1 wheelhouse=$2 codename=$3 sources=$4 dir=$5 work hook
    make_work_dir
    cp "$sources" "$work/debian.sources"
    export IMAGE_BUILD_PYTHON_PREFIX IMAGE_BUILD_PYVER IMAGE_BUILD_WHEELHOUSE="$wheelhouse"
    export IMAGE_BUILD_BASE_ENV
    IMAGE_BUILD_BASE_ENV=$(printf '%s\n' "${base_env[@]}")
    IMAGE_BUILD_PYTHON_PREFIX=$("$py" -c 'import sys; print(sys.prefix)')
    IMAGE_BUILD_PYVER=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    hook="$(printf '%q' "$self") customize-rootfs \"\$1\""
    log "building the base root file system (mmdebstrap $codename, minbase); a few minutes"
    # A private mount namespace: whatever mmdebstrap mounts dies with it, even if it is killed.
    SOURCE_DATE_EPOCH=$epoch unshare --mount --propagation private \
        mmdebstrap --mode=root --variant=minbase --format=directory --quiet \
        --include="$(IFS=,; echo "${packages[*]}")" \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook="$hook" \
        "$codename" "$work/rootfs" "$work/debian.sources" >&2
    # apt's download directories belong to _apt, as in Debian's images (mmdebstrap's cleanup
    # leaves them to root or to _apt from one run to the next).
    chroot "$work/rootfs" chown _apt:root /var/cache/apt/archives/partial /var/lib/apt/lists/partial
    find "$work/rootfs" -xdev -exec touch -h -d "@$epoch" {} +
    log "writing the base layer"
    layer_tar "$work/rootfs" "$work/layer.tar"
    digest_of "$work/layer.tar" >"$work/layer.digest"
    rm "$work/debian.sources"
    safe_rm "$dir"
    mv "$work" "$dir"
}

# The app layer: the project installed by the image's pip into a staging root inside the base
# root file system (chroot), compiled, and tarred; only the new files are in it.
build_app_layer() {
    local rootfs=$1 buildtools=$2 dir=$3 work stage shebang
    make_work_dir
    stage="$rootfs/tmp/app-build"
    cleanup_paths+=("$stage")
    safe_rm "$stage"
    mkdir -p "$stage/src" "$stage/wheels" "$stage/root" "$stage/home" "$stage/tmp"
    cp "$repo/pyproject.toml" "$repo/README.md" "$stage/src/"
    tar --create --directory="$repo" --exclude=__pycache__ --exclude='*.pyc' operator |
        tar --extract --directory="$stage/src"
    cp "$buildtools"/*.whl "$stage/wheels/"
    log "installing the project into /opt/venv (app layer)"
    unshare --mount --propagation private /bin/sh -c '
        set -e
        rootfs=$1; shift
        mount -t proc proc "$rootfs/proc"
        mount --bind /dev "$rootfs/dev"
        exec chroot "$rootfs" "$@"' sh "$rootfs" \
        /usr/bin/env -i PATH="/opt/venv/bin:$default_path" HOME=/tmp/app-build/home \
        TMPDIR=/tmp/app-build/tmp LANG=C.UTF-8 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        PYTHONDONTWRITEBYTECODE=1 PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/app-build/wheels EPOCH="$epoch" \
        /bin/sh -c '
            set -e
            /opt/venv/bin/pip install --quiet --no-deps --no-compile --no-warn-script-location \
                --root /tmp/app-build/root /tmp/app-build/src
            find /tmp/app-build/root/opt/venv -name tests -type d -path "*site-packages/*" -prune -exec rm -rf {} +
            find /tmp/app-build/root -exec touch -h -d "@$EPOCH" {} +
            /opt/venv/bin/python -m compileall -q -d /opt/venv /tmp/app-build/root/opt/venv' >&2
    shebang=$(head -n1 "$stage/root/opt/venv/bin/icechunk-operator")
    [[ $shebang == '#!/opt/venv/bin/python' ]] || die "icechunk-operator's shebang is $shebang"
    layer_tar "$stage/root" "$work/layer.tar" ./opt
    digest_of "$work/layer.tar" >"$work/layer.digest"
    safe_rm "$stage" "$dir"
    mv "$work" "$dir"
}

# Remove cached builds of other inputs (each base holds a root file system of about 1 GB).
prune_stale() {
    local keep=("$@") path name
    for path in "$root"/base-* "$root"/app-* "$root"/wheelhouse-* "$root"/buildtools-* "$root"/work.*; do
        [[ -e $path ]] || continue
        for name in "${keep[@]}"; do [[ $path == "$name" ]] && continue 2; done
        log "removing stale $path"
        safe_rm "$path"
    done
}

build_image() {
    [[ $(id -u) -eq 0 ]] || die "the project's image needs root (mmdebstrap --mode=root, chroot)"
    if ! command -v mmdebstrap >/dev/null; then  # a fresh machine: Debian's package, as root
        log "installing mmdebstrap from Debian's packages"
        apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap >/dev/null \
            || die "mmdebstrap is required (apt-get install mmdebstrap)"
    fi
    local py codename sources base_key base app_key app name tag out key python_version
    py=$(image_python)
    codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || die "cannot tell this machine's Debian release from /etc/os-release"
    sources="$root/debian.sources"
    python3 "$helper" debian-sources "$codename" >"$sources"
    local wheelhouse buildtools
    wheelhouse=$(ensure_wheelhouse "$py")
    buildtools=$(ensure_buildtools "$py")
    python_version=$("$py" -c 'import platform; print(platform.python_version())')
    # What python:3.14-slim's config gives the Dockerfile's final stage before its own ENV.
    base_env=("PATH=$default_path" "LANG=C.UTF-8" "PYTHON_VERSION=$python_version")

    base_key=$({
        cat "$lock" "$dockerfile" "$self" "$helper" "$sources"
        "$py" -c 'import sys; print(sys.version)'
        echo "$codename $epoch"
    } | sha256sum | cut -c1-16)
    base="$root/base-$base_key"
    [[ -f $base/layer.digest && -d $base/rootfs ]] || build_base_layer "$py" "$wheelhouse" "$codename" "$sources" "$base"

    app_key=$({
        echo "$base_key"
        cd "$repo"
        find pyproject.toml README.md operator -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
            LC_ALL=C sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16)
    app="$root/app-$app_key"
    [[ -f $app/layer.digest ]] || build_app_layer "$base/rootfs" "$buildtools" "$app"

    { read -r name; read -r tag; } < <(python3 "$helper" image-name "$repo/charts/icechunk-operator")
    out="$root/out/${name##*/}"
    out="${out/:/-}.oci.tar"
    key="$base_key $app_key $name"
    if [[ ! -f $out || $(cat "$out.key" 2>/dev/null) != "$key" ]]; then
        mkdir -p "$root/out"
        log "writing $name to $out"
        python3 "$helper" layout --out "$out" --name "$name" --ref "$tag" --dockerfile "$dockerfile" \
            "${base_env[@]/#/--base-env=}" --epoch "$epoch" --architecture "$(dpkg --print-architecture)" \
            --layer "$base/layer.tar=$(cat "$base/layer.digest")" \
            --history "base: mmdebstrap $codename minbase, CPython $python_version in /usr/local, /opt/venv from worker_image/requirements.lock, the Dockerfile's final-stage RUN lines" \
            --layer "$app/layer.tar=$(cat "$app/layer.digest")" \
            --history "app: pip install --no-deps /src (pyproject.toml, README.md, operator/) into /opt/venv, compileall" \
            >/dev/null
        echo "$key" >"$out.key"
    fi
    prune_stale "$base" "$app" "$wheelhouse" "$buildtools"
    image_tar=$out
}

build_pause() {
    local key out work
    pause_tar="$root/out/pause-1.oci.tar"
    key=$({ cat "$repo/worker_image/pause.c" "$helper"; gcc --version | head -n1; echo "$epoch"; } |
        sha256sum | cut -c1-16)
    out=$pause_tar
    if [[ ! -f $out || $(cat "$out.key" 2>/dev/null) != "$key" ]]; then
        make_work_dir
        mkdir -m 755 "$work/rootfs"
        log "compiling worker_image/pause.c (gcc -static -Os)"
        gcc -static -Os -s -Wall -Wextra -Werror -o "$work/rootfs/pause" "$repo/worker_image/pause.c"
        touch -d "@$epoch" "$work/rootfs/pause"
        layer_tar "$work/rootfs" "$work/layer.tar" ./pause
        mkdir -p "$root/out"
        python3 "$helper" layout --out "$out" --name localhost/icechunk-operator/pause:1 --ref 1 \
            --entrypoint '["/pause"]' --user 65535:65535 --base-env "PATH=$default_path" \
            --epoch "$epoch" --architecture "$(dpkg --print-architecture)" \
            --layer "$work/layer.tar" --history "pause: worker_image/pause.c, gcc -static -Os" >/dev/null
        echo "$key" >"$out.key"
        safe_rm "$work"
    fi
}

main() {
    local what=${1:-all} started=$SECONDS
    case $what in
        customize-rootfs) customize_rootfs "${2:?}"; return ;;
        all | image | pause) ;;
        *) echo "usage: scripts/build-image.sh [image|pause]" >&2; exit 2 ;;
    esac
    mkdir -p "$root"
    trap cleanup EXIT
    exec 9>"$root/.lock"
    if ! flock -n 9; then
        log "another build holds $root/.lock; waiting for it"
        flock 9
    fi
    [[ $what == image ]] || build_pause
    [[ $what == pause ]] || build_image
    log "done in $((SECONDS - started)) s"
    [[ -z $pause_tar ]] || printf '%s\n' "$pause_tar"
    [[ -z $image_tar ]] || printf '%s\n' "$image_tar"
}

main "$@"
