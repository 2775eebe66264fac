"""A real Kubernetes node on this machine: containerd and runc run the pods of the image, a kubelet
registers with the test API server, kube-proxy routes Services and CoreDNS answers for them.

The pods live on a bridge of their own (``ico0``, 10.244.0.0/24), whose host address also
serves the API server, CoreDNS and any test server the pods must reach. Pods reach nothing beyond
the node: a FORWARD rule drops what they send elsewhere, and the Service range is a blackhole
route on the host for anything kube-proxy did not translate. The kubelet puts its pods under the
cgroup ``/icechunk-node`` (cgroup v1 here: ``failCgroupV1: false``), and containerd, which lacks
CAP_SYS_RESOURCE in this VM, runs with ``restrict_oom_score_adj``. Everything the node changes on
the host is captured first and put back by :meth:`Node.stop` (``tests/cluster/host_state.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster.control_plane import REPO, SERVICE_RANGE, ControlPlane, free_port, wait_for
from tests.cluster.host_state import HostState, remove_cgroups

BRIDGE = "ico0"
BRIDGE_ADDRESS = "10.244.0.1"
POD_SUBNET = "10.244.0.0/24"
NODE_NAME = "icechunk-node"
CGROUP_ROOT = "/icechunk-node"
CNI_BIN = Path("/usr/lib/cni")
NAMESPACE = "k8s.io"  # containerd's namespace for the kubelet's images and containers


def build_node_binaries() -> Path:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-node.sh")], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(result.stdout.strip().splitlines()[-1])


def build_images() -> tuple[Path, Path]:
    """The image and the pause image as OCI layout tarballs (scripts/build-image.sh)."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-image.sh")], check=True, stdout=subprocess.PIPE, text=True
    )
    pause, image = result.stdout.strip().splitlines()[-2:]
    return Path(image), Path(pause)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Node:
    root: Path  # the node's own folder: containerd's state, the kubelet's root, logs
    bin: Path
    state_file: Path  # the host state before the node, kept until it is put back
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    host: HostState | None = None
    restored: list[str] = field(default_factory=list)  # what stop() put back, for the log
    dns_ready_port: int = 0  # CoreDNS's readiness endpoint on loopback

    @property
    def socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    # Network first: the API server listens on the bridge's address --------------------------
    def network_up(self, *more_folders: Path) -> None:
        """Capture the host's state, then give the node its bridge. ``more_folders``: where other
        processes of this run keep their files (the control plane's), for a later run to find."""
        if self.state_file.exists():  # a previous run was killed before it put the host back
            self._end_previous_run()
        self.host = HostState.capture()
        self.host.save(self.state_file)
        self._folders_file.write_text(json.dumps([str(self.root), *map(str, more_folders)]))
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        _ip("route", "add", "blackhole", SERVICE_RANGE)
        # Bridged traffic through iptables, so a pod's reply from a Service's pod on the same
        # bridge is translated back (kube-proxy needs it); forwarding for pod -> Service -> pod.
        Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text("1")
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
        subprocess.run(
            ["iptables", "-I", "FORWARD", "-s", POD_SUBNET, "!", "-o", BRIDGE, "-j", "DROP"],
            check=True,
            capture_output=True,
        )

    @property
    def _folders_file(self) -> Path:
        return self.state_file.with_suffix(".folders")

    def _end_previous_run(self) -> None:
        """Kill the processes a killed run left (any command naming one of its folders), then
        put the host back as that run found it."""
        folders = json.loads(self._folders_file.read_text()) if self._folders_file.exists() else []
        for pid, command in _processes():
            if any(folder in part for folder in folders for part in command):
                _kill(pid)
        remove_cgroups(CGROUP_ROOT)
        time.sleep(0.5)
        HostState.load(self.state_file).restore(extra_mount_prefixes=tuple(folders))

    # The node's daemons ------------------------------------------------------------------------
    def start(self, plane: ControlPlane, images: list[Path]) -> Node:
        for folder in ("containerd", "kubelet", "cni/net.d", "cni/ipam"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        _make_cgroup(CGROUP_ROOT)
        self._containerd()
        for image in images:
            self.ctr("images", "import", str(image))
        self._coredns(plane)
        self._scheduler(plane)
        self._kubelet(plane)
        self._kube_proxy(plane)

        def ready() -> bool:
            result = plane.kubectl(
                "get",
                "node",
                NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                check=False,
            )
            return result.stdout.strip() == "True"

        try:
            wait_for(ready, "the node to be Ready", timeout=120)
        except TimeoutError:
            raise TimeoutError("node not Ready:\n" + self.log_tail("kubelet")) from None
        try:  # CoreDNS answers once its kubernetes plugin has listed Services and endpoints
            wait_for(self._dns_ready, "CoreDNS", timeout=60)
        except TimeoutError:
            raise TimeoutError("CoreDNS not ready:\n" + self.log_tail("coredns")) from None
        return self

    def _dns_ready(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.dns_ready_port}/ready", timeout=1) as response:
            return bool(response.status == 200)

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.root / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)

    def log_tail(self, name: str, lines: int = 60) -> str:
        path = self.root / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def ctr(self, *args: str) -> str:
        result = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {result.stderr}")
        return result.stdout

    def _containerd(self) -> None:
        base = self.root / "containerd"
        cni = {
            "cniVersion": "1.0.0",
            "name": "icechunk-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,  # pods talk to the node only
                    "hairpinMode": True,  # a pod reaching itself through a Service
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET, "gateway": BRIDGE_ADDRESS}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.root / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (self.root / "cni" / "net.d" / "10-icechunk-node.conflist").write_text(json.dumps(cni))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""
version = 2
root = "{base / "root"}"
state = "{base / "state"}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{base / "ttrpc.sock"}"
[debug]
  level = "warn"
[metrics]
  address = ""
[{cri}]
  sandbox_image = "localhost/icechunk-operator/pause:1"
  # This VM lacks CAP_SYS_RESOURCE: without this, runc fails every sandbox writing oom_score_adj.
  restrict_oom_score_adj = true
  enable_selinux = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{self.root / "cni" / "net.d"}"
"""
        (base / "config.toml").write_text(config)
        self._spawn("containerd", ["containerd", "--config", str(base / "config.toml")])
        wait_for(lambda: self.socket.exists() and self._ctr_answers(), "containerd", timeout=30)

    def _ctr_answers(self) -> bool:
        try:
            self.ctr("version")
            return True
        except RuntimeError:
            return False

    def _coredns(self, plane: ControlPlane) -> None:
        self.dns_ready_port = free_port()
        corefile = f"""
.:53 {{
    bind {BRIDGE_ADDRESS}
    errors
    ready 127.0.0.1:{self.dns_ready_port}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {plane.kubeconfig} local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""
        (self.root / "Corefile").write_text(corefile)
        self._spawn("coredns", [str(self.bin / "coredns"), "-conf", str(self.root / "Corefile")])

    def _scheduler(self, plane: ControlPlane) -> None:
        """kube-scheduler: part of the control plane, needed only where a real node takes pods."""
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin / "kube-scheduler"),
                f"--kubeconfig={plane.kubeconfig}",
                f"--authentication-kubeconfig={plane.kubeconfig}",
                f"--authorization-kubeconfig={plane.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--v=1",
            ],
        )

    def _kubelet(self, plane: ControlPlane) -> None:
        resolv = self.root / "resolv.conf"  # not the host's: no search domains, no outside servers
        resolv.write_text(f"nameserver {BRIDGE_ADDRESS}\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # this VM has cgroup v1 only
            "failSwapOn": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": CGROUP_ROOT,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "address": BRIDGE_ADDRESS,
            "port": free_port(BRIDGE_ADDRESS),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            # The API server's requests (logs, exec) carry the client certificate it was given;
            # anything else is checked with the API server, as on a real node.
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(plane.kubelet_client_ca)},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDomain": "cluster.local",
            "clusterDNS": [BRIDGE_ADDRESS],
            "resolvConf": str(resolv),
            "serializeImagePulls": False,
            # The images were imported, not pulled: they could not come back once collected.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "protectKernelDefaults": False,
            "maxPods": 60,
            "nodeStatusUpdateFrequency": "5s",
        }
        path = self.root / "kubelet-config.json"
        path.write_text(json.dumps(config))
        self._spawn(
            "kubelet",
            [
                str(self.bin / "kubelet"),
                f"--config={path}",
                f"--kubeconfig={plane.kubeconfig}",
                f"--root-dir={self.root / 'kubelet'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={BRIDGE_ADDRESS}",
                "--v=1",
            ],
        )

    def _kube_proxy(self, plane: ControlPlane) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(plane.kubeconfig)},
            "mode": "iptables",
            "clusterCIDR": POD_SUBNET,
            "hostnameOverride": NODE_NAME,
            "bindAddress": BRIDGE_ADDRESS,
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "nodePortAddresses": [f"{BRIDGE_ADDRESS}/32"],
            "conntrack": {"maxPerCore": 0, "min": 0},  # leave the host's conntrack table size alone
            "iptables": {"localhostNodePorts": False},  # so route_localnet stays as it is
        }
        path = self.root / "kube-proxy-config.json"
        path.write_text(json.dumps(config))
        self._spawn("kube-proxy", [str(self.bin / "kube-proxy"), f"--config={path}", "--v=1"])

    # Stop and put the host back ------------------------------------------------------------
    def stop(self) -> None:
        kubelet = self.processes.pop("kubelet", None)
        if kubelet:  # first, so that it starts no container while the others are stopped
            _end(kubelet)
        remove_cgroups(CGROUP_ROOT)  # every container's processes are in there
        for name in reversed(list(self.processes)):
            _end(self.processes.pop(name))
        self._kill_shims()
        if self.host is not None:
            self.restored = self.host.restore(extra_mount_prefixes=(str(self.root),))
            left = self.host.differences(HostState.capture(), mount_prefixes=(str(self.root),))
            left += [f"cgroup {path}" for path in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_ROOT.strip('/')}")]
            if left:  # the state file stays: the next run tries again
                raise RuntimeError("the node left the host changed: " + "; ".join(left))
            self.state_file.unlink(missing_ok=True)
            self._folders_file.unlink(missing_ok=True)

    def _kill_shims(self) -> None:
        """containerd's shims outlive it by design (containers survive a containerd restart)."""
        for pid, command in _processes():
            if command[0].endswith("containerd-shim-runc-v2") and str(self.socket) in command:
                _kill(pid)
        time.sleep(0.2)


def _processes() -> list[tuple[int, list[str]]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                command = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if command and command[0]:
                found.append((int(entry.name), command))
    return found


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _make_cgroup(name: str) -> None:
    """The kubelet's ``cgroupRoot`` must exist in every v1 hierarchy before it starts."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if hierarchy.name == "unified" or not hierarchy.is_dir():
            continue
        folder = hierarchy / name.strip("/")
        folder.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":  # a new cpuset has no CPUs or memory nodes until given
            for key in ("cpuset.cpus", "cpuset.mems"):
                (folder / key).write_text((hierarchy / key).read_text())


def _end(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
