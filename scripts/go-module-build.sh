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
