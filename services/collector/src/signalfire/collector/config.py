"""The agent's configuration: ``agent.yaml`` plus ``SF_*`` overrides (``SF_NATS_URL``, ``SF_INTERVAL``...)."""

from __future__ import annotations

import re
import socket
from typing import Literal

import msgspec

from signalfire.bus import NatsConfig
from signalfire.collector.checks.base import ChecksConfig
from signalfire.config import Duration
from signalfire.events import (
    LABEL_NAME_PATTERN,
    MAX_LABEL_NAME_LENGTH,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABELS,
    host_name_problem,
)
from signalfire.regex import RegexError, compile_regex

#: Label names the event contract accepts (``signalfire.events.LabelName``).
_LABEL_NAME = re.compile(LABEL_NAME_PATTERN)

#: The shortest collection interval; below it the agent would cost more than it tells.
MIN_INTERVAL = 0.2

#: File systems that hold no user data (kernel, memory and container-layer mounts).
#: Entries are shell patterns (``cgroup*``) matched against the mount's fstype.
DEFAULT_EXCLUDED_FSTYPES = [
    "aufs",
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup*",
    "configfs",
    "debugfs",
    "devfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fuse.lxcfs",
    "fuse.portal",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
]


#: Block devices not reported by default: partitions (the whole disk is), loop, RAM, zram
#: and floppy/optical devices; node_exporter's default, as a regular expression.
DEFAULT_DISKIO_EXCLUDE = r"^(z?ram|loop|fd|sr|(h|s|v|xv)d[a-z]+|nvme\d+n\d+p|mmcblk\d+p)\d+$"


class CollectorSwitches(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Which collectors run; each is on unless switched off."""

    cpu: bool = True
    load: bool = True
    memory: bool = True
    filesystem: bool = True
    diskio: bool = True
    net: bool = True
    connections: bool = True
    processes: bool = True
    files: bool = True
    uptime: bool = True
    sensors: bool = True


class AgentConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything ``signalfire agent`` reads from its config file."""

    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    log_level: str = "info"
    log_format: Literal["logfmt", "json"] = "logfmt"
    #: Time between two batches; ticks are aligned to multiples of it on the wall clock.
    interval: Duration = Duration(5)
    #: The host name in payloads (subjects use a subject-safe form); default: the system's.
    hostname: str | None = None
    #: Static labels on every batch, e.g. ``{env: prod, role: web}``.
    labels: dict[str, str] = {}
    collectors: CollectorSwitches = msgspec.field(default_factory=CollectorSwitches)
    filesystem_exclude_fstypes: list[str] = msgspec.field(
        default_factory=lambda: list(DEFAULT_EXCLUDED_FSTYPES)
    )
    #: Mount points (shell patterns) not reported, e.g. ``/var/lib/docker/*``.
    filesystem_exclude_mounts: list[str] = []
    #: Block devices (regular expression) not reported by the diskio collector.
    diskio_exclude_devices: str = DEFAULT_DISKIO_EXCLUDE
    net_include_loopback: bool = False
    #: Software interfaces (bridges, veth pairs, tunnels): one per container on a container host.
    net_include_virtual: bool = False
    #: Interfaces (regular expression) not reported; empty: none.
    net_exclude_interfaces: str = ""
    checks: ChecksConfig = msgspec.field(default_factory=ChecksConfig)
    #: Batches kept while NATS is unreachable; the oldest are dropped beyond it.
    buffer_size: int = 1000
    #: A directory where buffered batches are also written, so they survive an agent restart.
    spool_dir: str | None = None

    def __post_init__(self) -> None:
        if self.interval < MIN_INTERVAL:
            raise ValueError(f"interval: must be at least {MIN_INTERVAL}s, got {float(self.interval)}s")
        if self.hostname is not None:
            if not self.hostname.strip():
                raise ValueError("hostname: must not be empty (leave it out to use the system's host name)")
            # Checked here, not at the first publish: every batch would be refused by the contract.
            problem = host_name_problem(self.hostname)
            if problem is not None:
                raise ValueError(f"hostname: {self.hostname!r} {problem}")
        self._check_labels()
        if self.buffer_size < 0:
            raise ValueError(f"buffer_size: must be 0 or more, got {self.buffer_size}")
        for field in ("diskio_exclude_devices", "net_exclude_interfaces"):
            try:
                compile_regex(getattr(self, field))
            except RegexError as exc:
                raise ValueError(f"{field}: not a valid regular expression: {exc}") from None
        if self.spool_dir is not None and not self.spool_dir.strip():
            raise ValueError("spool_dir: must not be empty (leave it out to buffer in memory only)")

    def _check_labels(self) -> None:
        # Checked here, not by the contract's types, so the message says which label is wrong.
        if len(self.labels) > MAX_LABELS:
            raise ValueError(f"labels: at most {MAX_LABELS} labels, got {len(self.labels)}")
        for name, value in self.labels.items():
            if len(name) > MAX_LABEL_NAME_LENGTH or not _LABEL_NAME.search(name):
                raise ValueError(
                    f"labels: name {name!r} must be up to {MAX_LABEL_NAME_LENGTH} letters, digits, "
                    "'_', '.' or '-'"
                )
            if len(value) > MAX_LABEL_VALUE_LENGTH:
                raise ValueError(
                    f"labels: value of {name!r} is longer than {MAX_LABEL_VALUE_LENGTH} characters"
                )

    @property
    def host(self) -> str:
        """The host name the agent reports: ``hostname`` or the system's."""
        return self.hostname or socket.gethostname()
