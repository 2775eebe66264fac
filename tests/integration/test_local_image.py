"""The image built without Docker agrees with worker_image/Dockerfile, and its Python really runs.

Users build the image with the Dockerfile; this machine has no container engine and no registry,
so scripts/build-image.sh builds the same image with mmdebstrap, as an OCI layout tarball that
containerd imports (the real-pod tests run it). This test holds the two together: it reads the
Dockerfile with its own small reader (not the builder's), reads the image's config and layers out
of the tarball, and compares user, environment, working directory, command and the installed
distributions. Then it runs the image without a container runtime: the layers extracted and
chrooted into as uid 10001, on a read-only root with a tmpfs /tmp as the chart's pods have, in a
private mount namespace (so no mount outlives the test, even when it is killed).

The first run builds the image (about two minutes; cached under the project's cache afterwards).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tarfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "worker_image" / "Dockerfile"
SITE_PACKAGES = "opt/venv/lib/python3.14/site-packages/"
# Run in the image as the pods run: the modules the operator, the commit pod and the Dask pods use,
# the standard library's compiled modules (each needs a Debian library), and TLS with the
# image's CA certificates.
IMPORT_CHECK = """
import importlib, importlib.metadata, json, os, ssl, sys
for name in ["icechunk_operator", "icechunk_operator.cli", "icechunk", "virtualizarr", "zarr", "xarray",
             "dask", "distributed", "dask_kubernetes.operator.controller", "kopf", "kubernetes",
             "netCDF4", "h5py", "pyarrow", "obstore", "canvod.readers", "sbf_parser", "numpy", "pandas",
             "sqlite3", "lzma", "bz2", "zlib", "ctypes", "uuid", "readline", "zoneinfo", "dbm.gnu"]:
    importlib.import_module(name)
try:
    open("/written-by-the-test", "w")
    root_write = "succeeded"
except OSError as error:
    root_write = error.strerror
with open(os.path.join(os.environ["TMPDIR"], "scratch"), "w") as scratch:
    scratch.write("tmp is writable")
print(json.dumps({
    "executable": sys.executable, "prefix": sys.prefix, "base_prefix": sys.base_prefix,
    "uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(), "root_write": root_write,
    "version": importlib.metadata.version("icechunk-operator"),
    "ca_certificates": len(ssl.create_default_context().get_ca_certs()),
}))
"""


def require_root_and_tools() -> None:
    missing = [tool for tool in ("mmdebstrap", "gcc", "unshare", "chroot") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        pytest.skip(
            f"the local image build needs root and {missing or 'these tools'} (scripts/build-image.sh)"
        )


# --- the Dockerfile, read independently of scripts/oci_image.py ---------------------------------


def dockerfile_final_stage(text: str) -> dict[str, Any]:
    """USER, WORKDIR, CMD, ENTRYPOINT and ENV of the last stage. Deliberately simple: it knows the
    forms this Dockerfile uses (unquoted K=V pairs, JSON CMD) and fails loudly on others."""
    joined = re.sub(r"\\\n", " ", text)
    lines = [
        line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")
    ]
    last_from = max(index for index, line in enumerate(lines) if line.upper().startswith("FROM "))
    stage: dict[str, Any] = {"env": {}, "user": None, "workdir": None, "cmd": None, "entrypoint": None}
    for line in lines[last_from + 1 :]:
        instruction, _, argument = line.partition(" ")
        argument = argument.strip()
        match instruction.upper():
            case "ENV":
                for pair in argument.split():
                    key, sep, value = pair.partition("=")
                    assert sep and '"' not in value and "'" not in value, f"this reader cannot parse {line!r}"
                    stage["env"][key] = value
            case "USER":
                stage["user"] = argument
            case "WORKDIR":
                stage["workdir"] = argument
            case "CMD" | "ENTRYPOINT":
                assert argument.startswith("["), f"this reader knows only the exec form: {line!r}"
                stage[instruction.lower()] = json.loads(argument)
    return stage


def lock_pins() -> dict[str, str]:
    text = (REPO / "worker_image" / "requirements.lock").read_text()
    return {
        normalize(name): version for name, version in re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.M)
    }


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- the OCI layout tarball ----------------------------------------------------------------------


@dataclass
class Image:
    """One image of an OCI layout tarball, its digests checked."""

    path: Path
    annotations: dict[str, str]
    config: dict[str, Any]
    layers: list[str]  # blob member names, base first
    files: dict[str, tarfile.TarInfo] = field(default_factory=dict)  # merged view of all layers
    contents: dict[str, bytes] = field(default_factory=dict)  # the few files the checks read


def sha256_of(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := handle.read(1 << 20):
        digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def wanted(name: str) -> bool:
    return name in {"etc/passwd", "opt/venv/bin/icechunk-operator"} or (
        name.startswith(SITE_PACKAGES) and name.endswith(".dist-info/METADATA")
    )


def read_image(path: Path) -> Image:
    with tarfile.open(path) as outer:

        def blob(digest: str) -> IO[bytes]:
            handle = outer.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
            assert handle is not None, f"{path}: no blob {digest}"
            return handle

        assert json.load(outer.extractfile("oci-layout"))["imageLayoutVersion"] == "1.0.0"  # type: ignore[arg-type]
        index = json.load(outer.extractfile("index.json"))  # type: ignore[arg-type]
        (entry,) = index["manifests"]
        assert sha256_of(blob(entry["digest"])) == entry["digest"]
        manifest = json.load(blob(entry["digest"]))
        assert sha256_of(blob(manifest["config"]["digest"])) == manifest["config"]["digest"]
        config = json.load(blob(manifest["config"]["digest"]))
        image = Image(path, entry["annotations"], config, [])
        for layer in manifest["layers"]:
            assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
            assert sha256_of(blob(layer["digest"])) == layer["digest"], (
                "a layer blob does not match its digest"
            )
            image.layers.append(f"blobs/sha256/{layer['digest'].removeprefix('sha256:')}")
            with tarfile.open(fileobj=blob(layer["digest"]), mode="r|") as members:
                for member in members:
                    name = member.name.removeprefix("./").rstrip("/")
                    assert ".wh." not in name, f"unexpected whiteout {name} (no layer deletes anything)"
                    image.files[name] = member
                    if member.isfile() and wanted(name):
                        image.contents[name] = members.extractfile(member).read()  # type: ignore[union-attr]
        # Uncompressed layers: each layer's digest is its diff_id.
        assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in manifest["layers"]]
    return image


@pytest.fixture(scope="module")
def image_tarballs() -> tuple[Path, Path]:
    """(pause image tarball, project image tarball), built or taken from the cache."""
    require_root_and_tools()
    result = subprocess.run(
        [str(REPO / "scripts" / "build-image.sh")], capture_output=True, text=True, timeout=3600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    pause, image = result.stdout.strip().splitlines()[-2:]
    return Path(pause), Path(image)


@pytest.fixture(scope="module")
def image(image_tarballs: tuple[Path, Path]) -> Image:
    return read_image(image_tarballs[1])


@pytest.fixture(scope="module")
def rootfs(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The image's layers extracted in order (as root, keeping owners), as a runtime would."""
    root = tmp_path_factory.mktemp("image-rootfs")
    with tarfile.open(image.path) as outer:
        for layer in image.layers:
            tar = subprocess.Popen(["tar", "-x", "--numeric-owner", "-C", str(root)], stdin=subprocess.PIPE)
            assert tar.stdin is not None
            shutil.copyfileobj(outer.extractfile(layer), tar.stdin, 1 << 20)  # type: ignore[misc]
            tar.stdin.close()
            assert tar.wait(timeout=600) == 0
    yield root
    shutil.rmtree(root)


def run_in_image(root: Path, config: dict[str, Any], argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run argv in the image as its config says (user, clean Env, working directory), on a
    read-only root with a tmpfs /tmp. The mounts live in a private mount namespace: they vanish
    with it, so nothing is left mounted however the command ends."""
    script = """
        set -e
        root=$1; userspec=$2; shift 2
        mount --bind "$root" "$root"
        mount -o remount,bind,ro "$root"
        mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
        mount -t proc proc "$root/proc"
        mount --bind /dev "$root/dev"
        exec chroot --userspec="$userspec" "$root" "$@"
    """
    namespace = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    command = ["/usr/bin/env", "-i", f"--chdir={config['WorkingDir']}", *config["Env"], *argv]
    return subprocess.run(
        [*namespace, str(root), config["User"], *command],
        capture_output=True,
        text=True,
        timeout=600,
    )


# --- the tests -----------------------------------------------------------------------------------


def test_the_layout_names_the_charts_default_image(image: Image) -> None:
    chart = yaml.safe_load((REPO / "charts" / "icechunk-operator" / "Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "charts" / "icechunk-operator" / "values.yaml").read_text())
    tag = values["image"]["tag"] or chart["appVersion"]
    assert image.annotations == {
        "io.containerd.image.name": f"docker.io/library/{values['image']['repository']}:{tag}",
        "org.opencontainers.image.ref.name": tag,
    }
    assert (image.config["os"], image.config["architecture"]) == ("linux", "amd64")
    assert len(image.layers) == 2  # base, then the project: a source change rebuilds only the second


def test_the_config_is_the_dockerfiles_final_stage(image: Image) -> None:
    stage = dockerfile_final_stage(DOCKERFILE.read_text())
    config = image.config["config"]
    assert config["User"] == stage["user"] == "10001:10001"
    assert config["WorkingDir"] == stage["workdir"]
    assert config.get("Cmd") == stage["cmd"]
    assert config.get("Entrypoint") == stage["entrypoint"]
    env = dict(pair.split("=", 1) for pair in config["Env"])
    base_path = env["PATH"].removeprefix("/opt/venv/bin:")
    assert {"/usr/local/bin", "/usr/bin", "/bin"} <= set(base_path.split(":"))
    for key, value in stage["env"].items():
        assert env[key] == value.replace("$PATH", base_path), key
    assert env["LANG"] == "C.UTF-8"  # as python:3.14-slim sets it


def test_the_venv_holds_exactly_the_lock_and_the_project(image: Image) -> None:
    installed: dict[str, str] = {}
    for name, content in image.contents.items():
        if name.endswith("METADATA"):
            headers = dict(re.findall(r"^(Name|Version): (\S+)$", content.decode(), re.M))
            installed[normalize(headers["Name"])] = headers["Version"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # `python -m venv` seeds pip, in the Dockerfile's build as here; its version is the
    # interpreter's bundled one.
    assert "pip" in installed
    del installed["pip"]
    assert installed == {**lock_pins(), normalize(project["name"]): project["version"]}


def test_the_user_interpreter_and_entry_point_are_where_the_dockerfile_puts_them(image: Image) -> None:
    users = [line.split(":") for line in image.contents["etc/passwd"].decode().splitlines()]
    assert [[*user[2:4], user[5]] for user in users if user[2] == "10001"] == [["10001", "10001", "/tmp"]]
    python = image.files["usr/local/bin/python3.14"]
    assert python.isfile() and python.mode & 0o111
    assert image.files["usr/local/bin/python3"].linkname == "python3.14"
    script = image.contents["opt/venv/bin/icechunk-operator"].decode()
    assert script.splitlines()[0] == "#!/opt/venv/bin/python"
    assert not any(name.startswith("dev/") for name in image.files)  # the runtime provides /dev


def test_the_images_python_imports_the_stack_as_uid_10001_on_a_read_only_root(
    image: Image, rootfs: Path
) -> None:
    config = image.config["config"]
    result = run_in_image(rootfs, config, ["python", "-c", IMPORT_CHECK])
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["executable"] == "/opt/venv/bin/python"
    assert (report["prefix"], report["base_prefix"]) == ("/opt/venv", "/usr/local")
    assert (report["uid"], report["gid"], report["cwd"]) == (10001, 10001, "/tmp")
    assert report["root_write"] == "Read-only file system"
    assert report["version"] == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert report["ca_certificates"] > 100


def pod_commands(config: dict[str, Any]) -> dict[str, list[str]]:
    """What each pod of this image runs, as Kubernetes composes it from the container's command and
    args and the image's Entrypoint and Cmd: the chart's operator and Dask-operator pods, and the
    commit pod and Dask scheduler and worker pods the operator makes (from its own builders)."""
    from icechunk_operator.k8s.children import commit_job, dask_cluster
    from icechunk_operator.k8s.settings import OperatorSettings
    from tests.unit.test_children import resources

    containers: dict[str, dict[str, Any]] = {}
    for template in sorted((REPO / "charts" / "icechunk-operator" / "templates").glob("*.yaml")):
        for index, command in enumerate(re.findall(r"^\s+command: \[(.*)\]$", template.read_text(), re.M)):
            containers[f"chart {template.stem} {index}"] = {
                "command": [w.strip() for w in command.split(",")]
            }
    batch, store = resources()
    settings = OperatorSettings(image="icechunk-operator:0.1.0")
    containers["commit pod"] = commit_job(batch, store, settings)["spec"]["template"]["spec"]["containers"][0]
    cluster = dask_cluster(batch, store, settings)["spec"]
    for role in ("scheduler", "worker"):
        containers[f"dask {role}"] = cluster[role]["spec"]["containers"][0]
    commands = {}
    for name, container in containers.items():
        command = container.get("command") or config.get("Entrypoint") or []
        args = container["args"] if "args" in container else ([] if "command" in container else config["Cmd"])
        commands[name] = [*command, *args]
    return commands


RUN_HELPS = """
import itertools, json, subprocess, sys
for name, argv in json.loads(sys.argv[1]).items():
    # The program and its subcommands (the words before the first option), asked for --help: each
    # must be on the image's PATH and start.
    words = list(itertools.takewhile(lambda word: not word.startswith("-"), argv))
    try:
        result = subprocess.run([*words, "--help"], capture_output=True, text=True)
    except FileNotFoundError:
        print(f"{name}: {words[0]} is not on the image's PATH")
        continue
    if result.returncode != 0:
        print(f"{name}: {' '.join(words)} --help exited {result.returncode}: {result.stderr[-300:]}")
"""


def test_the_images_command_and_every_pods_command_start(image: Image, rootfs: Path) -> None:
    config = image.config["config"]
    result = run_in_image(rootfs, config, [*config.get("Entrypoint", []), *config["Cmd"]])
    assert result.returncode == 0, result.stderr[-4000:]
    assert "usage: icechunk-operator" in result.stdout
    commands = pod_commands(config)
    assert {"commit pod", "dask scheduler", "dask worker"} < set(commands) and len(commands) >= 5
    result = run_in_image(rootfs, config, ["python", "-c", RUN_HELPS, json.dumps(commands)])
    assert (result.returncode, result.stdout) == (0, ""), result.stdout + result.stderr[-4000:]


def test_the_pause_image_sleeps_until_sigterm_and_reaps_orphans(
    image_tarballs: tuple[Path, Path], tmp_path: Path
) -> None:
    pause = read_image(image_tarballs[0])
    assert pause.annotations["io.containerd.image.name"] == "localhost/icechunk-operator/pause:1"
    assert pause.config["config"]["Entrypoint"] == ["/pause"]
    with tarfile.open(pause.path) as outer, tarfile.open(fileobj=outer.extractfile(pause.layers[0])) as layer:
        assert layer.getnames() == ["./pause"]
        layer.extract("./pause", tmp_path, filter="tar")
    binary = tmp_path / "pause"
    assert not has_interpreter(binary.read_bytes())  # static: the image holds nothing else
    assert subprocess.run([binary, "-v"], capture_output=True, text=True).stdout.startswith("pause")
    for stop in (signal.SIGTERM, signal.SIGINT):
        run_pause_as_pid_1(binary, stop)


def run_pause_as_pid_1(binary: Path, stop: signal.Signals) -> None:
    """Pause as PID 1 of its own PID namespace, as in a pod: an orphan made inside is adopted by
    it and must be reaped when it exits (a zombie stays in the children list until reaped); then
    `stop` ends it with status 0."""
    process = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", str(binary)])
    try:
        pid = wait_for(lambda: children(process.pid), "pause did not start")[0]
        orphan = ["nsenter", "--target", str(pid), "--pid", "sh", "-c", "sleep 1 & exit 0"]
        subprocess.run(orphan, check=True)
        assert len(children(pid)) == 1, "the orphan was not adopted by pause"
        wait_for(lambda: not children(pid), "pause did not reap the orphan")
        os.kill(pid, stop)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def has_interpreter(elf: bytes) -> bool:
    """True if a 64-bit little-endian ELF file names a dynamic loader (a PT_INTERP header)."""
    assert elf[:6] == b"\x7fELF\x02\x01", "not a 64-bit little-endian ELF file"
    (offset,) = struct.unpack_from("<Q", elf, 0x20)
    size, count = struct.unpack_from("<HH", elf, 0x36)
    return any(struct.unpack_from("<I", elf, offset + i * size)[0] == 3 for i in range(count))


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def wait_for[T](probe: Callable[[], T], failure: str, timeout: float = 10) -> T:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)
    return value
