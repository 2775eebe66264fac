"""What a node changes on the host it runs on, captured before and put back after.

A kubelet sets kernel parameters (``vm.overcommit_memory``, ``kernel.panic``,
``kernel.panic_on_oops``), kubelet and kube-proxy write iptables chains, the CNI bridge plugin
turns on ``ip_forward``, and containerd and the kubelet leave mounts (container root
filesystems, network namespaces, pod volumes) and cgroups. A test machine must come out of a
test run as it went in, even after a failure or a killed test run: the state captured before
the node starts is also written to a file, and the next start restores from it when a previous
run never got to.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

#: Kernel parameters a node may change, as paths under /proc/sys.
SYSCTL_ROOTS = (
    "vm",
    "kernel",
    "net/ipv4",
    "net/ipv6/conf/all",
    "net/ipv6/conf/default",
    "net/bridge",
    "net/netfilter",
    "net/core",
)
#: Kernel parameters that change by themselves (counters, random values): never restored.
VOLATILE = re.compile(
    r"^kernel/(random|ns_last_pid|pty/nr|tainted)|nf_conntrack_count$|^net/ipv4/conf/(?!all|default)"
)
#: Where a node mounts things: only new mounts here are undone.
MOUNT_PREFIXES = ("/run/containerd", "/run/netns", "/var/run/netns", "/var/lib/kubelet", "/run/kubelet")
TABLES = ("filter", "nat", "mangle", "raw")
EMPTY_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}


def read_sysctls() -> dict[str, str]:
    values: dict[str, str] = {}
    for root in SYSCTL_ROOTS:
        for path in Path("/proc/sys", root).rglob("*"):
            key = str(path.relative_to("/proc/sys"))
            if VOLATILE.search(key) or not path.is_file() or not os.access(path, os.W_OK):
                continue
            try:
                values[key] = path.read_text()
            except OSError:  # write-only or refused to read
                continue
    return values


def mount_points() -> list[str]:
    """Mount points in mount order (later mounts may be on top of earlier ones)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        points.append(line.split()[4].replace("\\040", " "))
    return points


def save_iptables(binary: str) -> str:
    result = subprocess.run([f"{binary}-save"], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else ""


def normalized_rules(saved: str) -> dict[str, list[str]]:
    """Each table's chains and rules, without what changes by itself (the save's comment lines
    with their date, packet counters), and without tables holding nothing (no rules, every
    chain ACCEPT): an emptied table is as good as one never made."""
    tables: dict[str, list[str]] = {}
    current: list[str] = []
    for line in saved.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], [])
        elif line != "COMMIT":
            current.append(re.sub(r"\[\d+:\d+\]", "[0:0]", line))
    return {
        table: lines
        for table, lines in tables.items()
        if any(not (line.startswith(":") and line.endswith(" ACCEPT [0:0]")) for line in lines)
    }


def _restore_table_text(saved: str) -> str:
    """``*-restore`` input that gives each table exactly its saved rules, and empties tables
    that did not exist before (restoring a table replaces all its chains and rules)."""
    present = set(re.findall(r"^\*(\w+)$", saved, re.MULTILINE))
    text = saved
    for table in TABLES:
        if table not in present:
            chains = "".join(f":{chain} ACCEPT [0:0]\n" for chain in EMPTY_CHAINS[table])
            text += f"*{table}\n{chains}COMMIT\n"
    return text


@dataclass
class HostState:
    sysctls: dict[str, str]
    iptables: dict[str, str]  # binary -> its save output
    mounts: list[str]
    netns: list[str]
    links: list[str]
    routes: list[str]

    @classmethod
    def capture(cls) -> HostState:
        return cls(
            sysctls=read_sysctls(),
            iptables={binary: save_iptables(binary) for binary in ("iptables", "ip6tables")},
            mounts=mount_points(),
            netns=sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
            links=_links(),
            routes=_routes(),
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> HostState:
        return cls(**json.loads(path.read_text()))

    def differences(self, now: HostState, mount_prefixes: tuple[str, ...] = ()) -> list[str]:
        """What differs between this state and ``now``, in what a node touches."""
        found = [
            f"{key.replace('/', '.')}: {self.sysctls[key].strip()} -> {now.sysctls[key].strip()}"
            for key in self.sysctls.keys() & now.sysctls.keys()
            if self.sysctls[key] != now.sysctls[key]
        ]
        for binary, saved in self.iptables.items():
            was, is_now = normalized_rules(saved), normalized_rules(now.iptables.get(binary, ""))
            found += [
                f"{binary} {table} table: {was.get(table, [])} -> {is_now.get(table, [])}"
                for table in sorted(was.keys() | is_now.keys())
                if was.get(table) != is_now.get(table)
            ]
        prefixes = MOUNT_PREFIXES + mount_prefixes
        found += [f"mount {m}" for m in set(now.mounts) - set(self.mounts) if m.startswith(prefixes)]
        found += [f"network namespace {n}" for n in set(now.netns) - set(self.netns)]
        found += [f"link {link}" for link in set(now.links) - set(self.links)]
        found += [f"route {route}" for route in set(now.routes) - set(self.routes)]
        return sorted(found)

    def restore(self, extra_mount_prefixes: tuple[str, ...] = ()) -> list[str]:
        """Put the host back; returns what was put back (for the log), and raises if anything
        could not be."""
        done: list[str] = []
        problems: list[str] = []
        before = set(self.mounts)
        prefixes = MOUNT_PREFIXES + extra_mount_prefixes
        for point in reversed(mount_points()):
            if point not in before and point.startswith(prefixes):
                result = subprocess.run(["umount", "-l", point], capture_output=True, text=True)
                if result.returncode == 0:
                    done.append(f"unmounted {point}")
                elif "not mounted" not in result.stderr:
                    problems.append(f"umount {point}: {result.stderr.strip()}")
        if os.path.isdir("/run/netns"):
            for name in sorted(set(os.listdir("/run/netns")) - set(self.netns)):
                subprocess.run(["umount", "-l", f"/run/netns/{name}"], capture_output=True)
                Path("/run/netns", name).unlink(missing_ok=True)
                done.append(f"removed network namespace {name}")
        for link in sorted(set(_links()) - set(self.links)):
            if subprocess.run(["ip", "link", "delete", link], capture_output=True).returncode == 0:
                done.append(f"deleted link {link}")
        for route in sorted(set(_routes()) - set(self.routes)):
            subprocess.run(["ip", "route", "delete", *route.split()], capture_output=True)
            done.append(f"deleted route {route}")
        for binary, saved in self.iptables.items():
            if normalized_rules(save_iptables(binary)) == normalized_rules(saved):
                continue
            result = subprocess.run(
                [f"{binary}-restore"], input=_restore_table_text(saved), capture_output=True, text=True
            )
            if result.returncode != 0:
                problems.append(f"{binary}-restore: {result.stderr.strip()}")
            else:
                done.append(f"restored {binary} rules")
        now = read_sysctls()
        for key, value in self.sysctls.items():
            if key in now and now[key] != value:
                try:
                    Path("/proc/sys", key).write_text(value)
                    done.append(f"{key.replace('/', '.')} = {value.strip()} (was {now[key].strip()})")
                except OSError as error:
                    problems.append(f"sysctl {key}: {error}")
        if problems:
            raise RuntimeError("the host could not be put back as it was: " + "; ".join(problems))
        return done


def _links() -> list[str]:
    result = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    return [line.split(":")[1].strip().split("@")[0] for line in result.stdout.splitlines()]


def _routes() -> list[str]:
    result = subprocess.run(["ip", "route", "show"], capture_output=True, text=True, check=True)
    return [line.strip() for line in result.stdout.splitlines()]


def remove_cgroups(name: str) -> list[str]:
    """Kill what runs in cgroup ``name`` (in every v1 hierarchy) and remove it, deepest first."""
    removed = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / name.strip("/")
        if not top.is_dir():
            continue
        for procs in top.rglob("cgroup.procs"):
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for folder in [*sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)), top]:
            for _ in range(50):  # a killed process leaves its cgroup a moment later
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        if not top.exists():
            removed.append(str(top))
    return removed
