"""The parts of scripts/build-image.sh that are easier in Python: reading the Dockerfile, writing
the OCI image layout.

Runs on the host's own python3 (3.11+, standard library only), not on the project's CPython
3.14: that interpreter is what goes into the image, and this helper must not depend on the
development virtualenv (`make image-local` works without `make setup`).

The Dockerfile stays the one description of the image: its final stage's RUN lines are executed
in the image's root filesystem (chroot), and its ENV, USER, WORKDIR, CMD and ENTRYPOINT become
the image config. The reader is deliberately small: it knows the instructions
worker_image/Dockerfile uses, and refuses any other instruction in the final stage by name and
line, so the two builds cannot silently drift apart.

Subcommands (each prints its result on stdout):
  image-name CHART_DIR            the chart's default image reference, then its tag
  debian-sources CODENAME         the host's apt sources for its Debian release (deb822)
  build-requires PYPROJECT        the [build-system] requires, one per line
  run-final-stage ROOTFS DOCKERFILE   run the final stage's RUN lines in ROOTFS (chroot)
  layout --out TAR --name REF ... write an OCI image layout tarball
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
# What the final stage may COPY: the virtualenv the build stage made, which the local build makes
# itself (scripts/build-image.sh installs the same lock into /opt/venv).
ALLOWED_COPIES = {("/opt/venv", "/opt/venv")}


class DockerfileError(Exception):
    """The Dockerfile says something this reader does not build; the message names the line."""


@dataclass
class Run:
    """One RUN line, with what Docker would run it under: the stage's ENV, USER and WORKDIR then."""

    line: int
    argv: list[str]
    env: dict[str, str]
    user: str | None
    workdir: str | None


@dataclass
class Stage:
    """One FROM ... stage: what the image config and the local build take from it."""

    base: str
    name: str | None
    env: dict[str, str] = field(default_factory=dict)
    args: dict[str, str] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    copies: list[tuple[int, str]] = field(default_factory=list)
    unsupported: list[tuple[int, str]] = field(default_factory=list)
    user: str | None = None
    workdir: str | None = None
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    exposed: list[str] = field(default_factory=list)


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Join backslash continuations; drop comments and blank lines. Yields (first line no, text)."""
    lines: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment line inside a continued instruction is skipped, as Docker does
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        lines.append((start, " ".join(part for part in pending if part)))
        pending = []
    if pending:
        lines.append((start, " ".join(pending)))
    return lines


_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_VARIABLE = re.compile(rf"\$(?:\{{(?P<braced>{_NAME})(?P<op>:[-+])?(?P<word>[^}}]*)\}}|(?P<bare>{_NAME}))")


def substitute(text: str, env: dict[str, str]) -> str:
    """Docker's variable substitution: $VAR, ${VAR}, ${VAR:-word}, ${VAR:+word}."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        value = env.get(name, "")
        operator = match.group("op")
        if operator == ":-":
            return value or match.group("word")
        if operator == ":+":
            return match.group("word") if value else ""
        return value

    return _VARIABLE.sub(replace, text)


def exec_or_shell(argument: str, line: int) -> list[str]:
    """CMD/ENTRYPOINT/RUN: the JSON exec form as is; the shell form under /bin/sh -c."""
    if argument.startswith("["):
        try:
            value = json.loads(argument)
        except json.JSONDecodeError as error:
            raise DockerfileError(f"line {line}: not a JSON list: {argument!r} ({error})") from error
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise DockerfileError(f"line {line}: exec form must be a list of strings: {argument!r}")
        return value
    return ["/bin/sh", "-c", argument]


def key_values(argument: str, line: int, env: dict[str, str]) -> dict[str, str]:
    """ENV/LABEL/ARG pairs: `K=V K2="V 2"`, or the legacy `K V` form. Values see the env before."""
    if "=" not in argument.split()[0]:
        key, _, value = argument.partition(" ")
        return {key: substitute(value.strip(), env)}
    pairs: dict[str, str] = {}
    for token in shlex.split(substitute(argument, env), posix=True):
        key, sep, value = token.partition("=")
        if not sep:
            raise DockerfileError(f"line {line}: expected KEY=VALUE, got {token!r}")
        pairs[key] = value
    return pairs


def arg_defaults(argument: str, line: int, known: dict[str, str]) -> dict[str, str]:
    """ARG NAME[=default]: a bare NAME takes the value declared before (a meta ARG), if any."""
    if "=" in argument.split()[0]:
        return key_values(argument, line, known)
    return {name: known.get(name, "") for name in argument.split()}


def parse_dockerfile(path: Path, base_env: dict[str, str]) -> list[Stage]:
    """The stages of a Dockerfile, with each stage's ENV on top of `base_env` (the base image's)."""
    stages: list[Stage] = []
    meta_args: dict[str, str] = {}  # ARGs before the first FROM: seen by FROM lines only
    for line, text in logical_lines(path.read_text()):
        instruction, _, argument = text.partition(" ")
        instruction, argument = instruction.upper(), argument.strip()
        if instruction == "ARG" and not stages:
            meta_args.update(arg_defaults(argument, line, meta_args))
            continue
        if instruction == "FROM":
            words = substitute(argument, meta_args).split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name, env=dict(base_env)))
            continue
        if not stages:
            raise DockerfileError(f"{path}:{line}: {instruction} before the first FROM")
        stage = stages[-1]
        scope = {**stage.args, **stage.env}
        if instruction == "ARG":
            stage.args.update(arg_defaults(argument, line, {**meta_args, **scope}))
        elif instruction == "ENV":
            stage.env.update(key_values(argument, line, scope))
        elif instruction == "RUN":
            stage.runs.append(
                Run(line, exec_or_shell(argument, line), dict(stage.env), stage.user, stage.workdir)
            )
        elif instruction == "USER":
            stage.user = substitute(argument, scope)
        elif instruction == "WORKDIR":
            stage.workdir = os.path.join(stage.workdir or "/", substitute(argument, scope))
        elif instruction == "CMD":
            stage.cmd = exec_or_shell(argument, line)
        elif instruction == "ENTRYPOINT":
            stage.entrypoint = exec_or_shell(argument, line)
            stage.cmd = None  # Docker resets an inherited CMD when a stage sets ENTRYPOINT
        elif instruction == "LABEL":
            stage.labels.update(key_values(argument, line, scope))
        elif instruction == "EXPOSE":
            stage.exposed.extend(port if "/" in port else f"{port}/tcp" for port in argument.split())
        elif instruction == "COPY":
            stage.copies.append((line, argument))
        else:
            stage.unsupported.append((line, f"{instruction} {argument}"))
    if not stages:
        raise DockerfileError(f"{path}: no FROM")
    return stages


def final_stage(path: Path, base_env: dict[str, str]) -> Stage:
    """The last stage, checked to hold nothing the local build would leave out."""
    stages = parse_dockerfile(path, base_env)
    stage = stages[-1]
    names = {earlier.name for earlier in stages[:-1] if earlier.name}
    for line, text in stage.unsupported:
        raise DockerfileError(
            f"{path}:{line}: the local build (scripts/build-image.sh) does not handle {text!r}"
        )
    for line, argument in stage.copies:
        words = argument.split()
        source_stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
        paths = tuple(w for w in words if not w.startswith("--"))
        if source_stage not in names or paths not in ALLOWED_COPIES:
            raise DockerfileError(
                f"{path}:{line}: the local build (scripts/build-image.sh) does not reproduce "
                f"{argument!r}; only COPY --from=<build stage> /opt/venv /opt/venv is built"
            )
    return stage


def run_final_stage(rootfs: Path, dockerfile: Path, base_env: dict[str, str]) -> None:
    """Run the final stage's RUN lines inside `rootfs`, each with that point's stage ENV only."""
    stage = final_stage(dockerfile, base_env)
    for run in stage.runs:
        print(f"oci_image: RUN (Dockerfile line {run.line}): {shlex.join(run.argv)}", file=sys.stderr)
        chroot = ["chroot"]
        if run.user is not None:
            # chroot resolves user names outside the image; only numeric USER is unambiguous.
            if not re.fullmatch(r"\d+(:\d+)?", run.user):
                raise DockerfileError(f"{dockerfile}:{run.line}: RUN after a non-numeric USER {run.user!r}")
            chroot.append(f"--userspec={run.user}")
        environment = [f"{key}={value}" for key, value in run.env.items()]
        workdir = [f"--chdir={run.workdir}"] if run.workdir else []
        command = [*chroot, str(rootfs), "/usr/bin/env", "-i", *workdir, *environment, *run.argv]
        subprocess.run(command, check=True)


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def image_name(chart_dir: Path) -> tuple[str, str]:
    """The chart's default image (values.yaml image.repository, tag or appVersion), normalised.

    A two-line reading of the two YAML files (no YAML library on the host's python3): the keys it
    needs are plain scalars at fixed places.
    """
    chart = (chart_dir / "Chart.yaml").read_text()
    values = (chart_dir / "values.yaml").read_text()
    app_version = re.search(r'^appVersion:\s*"?([^"\s#]+)"?', chart, re.MULTILINE)
    block = re.search(r"^image:\s*\n((?:[ \t]+.*\n?)+)", values, re.MULTILINE)
    if app_version is None or block is None:
        raise SystemExit(f"oci_image: no appVersion in {chart_dir}/Chart.yaml or no image: in values.yaml")
    fields = dict(re.findall(r'^\s+(\w+):\s*"?([^"\s#]*)"?', block.group(1), re.MULTILINE))
    repository, tag = fields.get("repository", ""), fields.get("tag") or app_version.group(1)
    if not repository:
        raise SystemExit(f"oci_image: {chart_dir}/values.yaml has no image.repository")
    first = repository.split("/", 1)[0]
    if "/" not in repository:
        repository = f"docker.io/library/{repository}"
    elif "." not in first and ":" not in first and first != "localhost":
        repository = f"docker.io/{repository}"
    return f"{repository}:{tag}", tag


def debian_sources(codename: str, etc_apt: Path = Path("/etc/apt")) -> str:
    """The host's apt sources for its own Debian release, as deb822 stanzas for mmdebstrap.

    Kept: enabled `deb` entries whose suite is the codename or codename-* (updates, security) and
    whose components include main. Third-party repositories use their own suite or component
    names (nodistro, cloud-sdk, stable), so they stay out of the image's apt sources. No mirror
    host is named here: the image uses whatever this machine's apt uses.
    """
    stanzas: list[dict[str, str]] = []
    files = sorted((etc_apt / "sources.list.d").glob("*.sources"))
    for path in files:
        for block in re.split(r"\n[ \t]*\n", path.read_text()):
            fields: dict[str, str] = {}
            last = ""
            for raw in block.splitlines():
                if raw.lstrip().startswith("#") or not raw.strip():
                    continue
                if raw[0] in " \t" and last:
                    fields[last] += "\n" + raw
                    continue
                key, _, value = raw.partition(":")
                last = key.strip()
                fields[last] = value.strip()
            if fields:
                stanzas.append(fields)
    one_line = [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for raw in path.read_text().splitlines():
            words = raw.split("#", 1)[0].split()
            if not words or words[0] != "deb":
                continue
            options = ""
            if len(words) > 1 and words[1].startswith("["):
                end = next(i for i, word in enumerate(words) if word.endswith("]"))
                options = " ".join(words[1 : end + 1])[1:-1]
                words = [words[0], *words[end + 1 :]]
            stanza = {"Types": "deb", "URIs": words[1], "Suites": words[2], "Components": " ".join(words[3:])}
            signed_by = re.search(r"signed-by=(\S+)", options)
            if signed_by:
                stanza["Signed-By"] = signed_by.group(1)
            stanzas.append(stanza)
    kept = []
    for stanza in stanzas:
        lower = {key.lower(): value for key, value in stanza.items()}
        suites = lower.get("suites", "").split()
        if (
            "deb" in lower.get("types", "").split()
            and lower.get("enabled", "yes").lower() != "no"
            and "main" in lower.get("components", "").split()
            and any(suite == codename or suite.startswith(codename + "-") for suite in suites)
        ):
            kept.append("\n".join(f"{key}: {value}" for key, value in stanza.items()))
    if not kept:
        raise SystemExit(f"oci_image: no enabled Debian {codename} main source in {etc_apt}")
    return "\n\n".join(kept) + "\n"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def write_layout(
    out: Path,
    name: str,
    ref: str,
    config: dict[str, object],
    layers: list[tuple[Path, str]],
    history: list[str],
    epoch: int,
    architecture: str,
) -> None:
    """Write an OCI image layout tarball: oci-layout, index.json, blobs/sha256/* (sorted, fixed
    mtimes, uncompressed layers, so a layer's digest is also its diff_id)."""
    created = datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    image_config = {
        "created": created,
        "architecture": architecture,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [digest for _, digest in layers]},
        "history": [{"created": created, "created_by": line} for line in history],
    }
    config_blob = json.dumps(image_config, indent=2, sort_keys=True).encode()
    config_digest = "sha256:" + hashlib.sha256(config_blob).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": len(config_blob)},
        "layers": [
            {"mediaType": LAYER_MEDIA_TYPE, "digest": digest, "size": path.stat().st_size}
            for path, digest in layers
        ],
    }
    manifest_blob = json.dumps(manifest, indent=2, sort_keys=True).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest_blob).hexdigest()
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": manifest_digest,
                "size": len(manifest_blob),
                "platform": {"architecture": architecture, "os": "linux"},
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": ref},
            }
        ],
    }
    small = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, indent=2, sort_keys=True).encode(),
        f"blobs/sha256/{config_digest[7:]}": config_blob,
        f"blobs/sha256/{manifest_digest[7:]}": manifest_blob,
    }
    big = {f"blobs/sha256/{digest[7:]}": path for path, digest in layers}

    def info(member: str, size: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
        entry = tarfile.TarInfo(member)
        entry.size, entry.type, entry.mtime = size, kind, epoch
        entry.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        entry.uname = entry.gname = "root"
        return entry

    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info("blobs", 0, tarfile.DIRTYPE))
        archive.addfile(info("blobs/sha256", 0, tarfile.DIRTYPE))
        for member in sorted({*small, *big}):
            if member in small:
                archive.addfile(info(member, len(small[member])), io.BytesIO(small[member]))
            else:
                path = big[member]
                with path.open("rb") as handle:
                    archive.addfile(info(member, path.stat().st_size), handle)
    partial.replace(out)


def layout_command(args: argparse.Namespace) -> None:
    config: dict[str, object] = {}
    history: list[str] = []
    if args.dockerfile:
        base_env = dict(pair.split("=", 1) for pair in args.base_env)
        stage = final_stage(Path(args.dockerfile), base_env)
        config["Env"] = [f"{key}={value}" for key, value in stage.env.items()]
        for key, value in (
            ("User", stage.user),
            ("WorkingDir", stage.workdir),
            ("Cmd", stage.cmd),
            ("Entrypoint", stage.entrypoint),
        ):
            if value is not None:
                config[key] = value
        if stage.labels:
            config["Labels"] = stage.labels
        if stage.exposed:
            config["ExposedPorts"] = {port: {} for port in stage.exposed}
    else:
        config["Env"] = list(args.base_env)
    for key, value in (("Entrypoint", args.entrypoint), ("Cmd", args.cmd)):
        if value is not None:
            config[key] = json.loads(value)
    if args.user is not None:
        config["User"] = args.user
    layers = []
    for spec in args.layer:
        path_text, _, digest = spec.partition("=")
        path = Path(path_text)
        layers.append((path, digest or sha256_file(path)))
        history.append(f"local build: {path.parent.name}/{path.name}")
    if args.history:
        history = list(args.history)
    if len(history) != len(layers):
        raise SystemExit("oci_image: give one --history per --layer")
    write_layout(Path(args.out), args.name, args.ref, config, layers, history, args.epoch, args.architecture)
    print(args.out)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    name = commands.add_parser("image-name")
    name.add_argument("chart_dir", type=Path)
    requires = commands.add_parser("build-requires")
    requires.add_argument("pyproject", type=Path)
    sources = commands.add_parser("debian-sources")
    sources.add_argument("codename")
    run = commands.add_parser("run-final-stage")
    run.add_argument("rootfs", type=Path)
    run.add_argument("dockerfile", type=Path)
    run.add_argument("--base-env", action="append", default=[], help="K=V the base image provides")
    layout = commands.add_parser("layout")
    layout.add_argument("--out", required=True)
    layout.add_argument("--name", required=True, help="full reference, e.g. docker.io/library/x:1")
    layout.add_argument("--ref", required=True, help="org.opencontainers.image.ref.name (the tag)")
    layout.add_argument(
        "--dockerfile", help="take Env, User, WorkingDir, Cmd, Entrypoint from its final stage"
    )
    layout.add_argument("--base-env", action="append", default=[], help="K=V the base image provides")
    layout.add_argument("--entrypoint", help="JSON list")
    layout.add_argument("--cmd", help="JSON list")
    layout.add_argument("--user")
    layout.add_argument("--layer", action="append", default=[], help="PATH[=sha256:DIGEST], base first")
    layout.add_argument("--history", action="append", help="created_by text of each layer")
    layout.add_argument("--epoch", type=int, default=0)
    layout.add_argument("--architecture", default="amd64")
    args = parser.parse_args(argv)
    try:
        if args.command == "image-name":
            print("\n".join(image_name(args.chart_dir)))
        elif args.command == "build-requires":
            with args.pyproject.open("rb") as handle:
                print("\n".join(tomllib.load(handle)["build-system"]["requires"]))
        elif args.command == "debian-sources":
            print(debian_sources(args.codename), end="")
        elif args.command == "run-final-stage":
            run_final_stage(args.rootfs, args.dockerfile, dict(pair.split("=", 1) for pair in args.base_env))
        else:
            layout_command(args)
    except DockerfileError as error:
        raise SystemExit(f"oci_image: {error}") from error


if __name__ == "__main__":
    main(sys.argv[1:])
