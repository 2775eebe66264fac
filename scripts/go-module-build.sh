# Sourced by the build scripts: build one binary from a Go module at a version, through a
# throw-away wrapper module (so the target's own replace directives, which `go install pkg@v`
# refuses, do not matter). Needs $root (work folder), $bin (output folder) and a `log` function.

build_go_module() {  # name module package version
    local name=$1 module=$2 package=$3 version=$4 dir="$root/src/$1"
    [[ -x "$bin/$name" ]] && return
    command -v go >/dev/null || { log "Go is required to build $name"; exit 1; }
    mkdir -p "$dir"
    printf 'module icechunk-operator.invalid/%s\n\ngo 1.24\n\nrequire %s %s\n' "$name" "$module" "$version" >"$dir/go.mod"
    printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$package" >"$dir/tools.go"
    (cd "$dir" && go mod tidy >/dev/null 2>&1 || go mod download "$module@$version")
    log "building $name $version"
    (cd "$dir" && CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" \
        go build -trimpath -ldflags "-s -w" -o "$bin/$name.tmp" "$package")
    mv "$bin/$name.tmp" "$bin/$name"
}

# Build commands of k8s.io/kubernetes (cmd/<name>) at a release, through a wrapper module whose
# replace lines pin each staging module (k8s.io/api, k8s.io/client-go, ...) to its published
# v0.X.Y, which is what `go build` of the main module cannot resolve on its own.
build_kubernetes_commands() {  # version name...
    local version=$1 dir="$root/src/kubernetes" kmod name
    shift
    local staging_minor="v0.${version#v1.}"
    mkdir -p "$dir"
    kmod=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$version" \
        | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    {
        echo "module icechunk-operator.invalid/kubernetes"
        echo
        echo "go $(sed -n 's/^go //p' "$kmod")"
        echo
        echo "require k8s.io/kubernetes $version"
        echo
        sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#replace \1 => \1 '"$staging_minor"'#p' "$kmod"
    } >"$dir/go.mod"
    {
        printf '//go:build tools\n\npackage tools\n\nimport (\n'
        for name in "$@"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$name"; done
        printf ')\n'
    } >"$dir/tools.go"
    (cd "$dir" && go mod tidy -e >/dev/null 2>&1 || true)
    # The version the binaries report (helm checks a chart's kubeVersion against it, the kubelet
    # its API server's); a plain `go build` would say v0.0.0-master.
    local minor=${version#v1.}
    minor=${minor%%.*}
    local version_flags="" package
    for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        version_flags+=" -X $package.gitVersion=$version -X $package.gitMajor=1"
        version_flags+=" -X $package.gitMinor=$minor -X $package.gitTreeState=clean"
    done
    for name in "$@"; do
        log "building $name $version"
        (cd "$dir" && CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" \
            go build -trimpath -ldflags "-s -w $version_flags" -o "$bin/$name.tmp" "k8s.io/kubernetes/cmd/$name")
        mv "$bin/$name.tmp" "$bin/$name"
    done
}
