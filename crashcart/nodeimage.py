"""The node image's contract: what a node pod (or `docker run`) must give crashcart so it
works from inside a container, as it does on the host.

The node image is crashcart plus the default toolbox as a container image
(`crashcart image node`, crashcart/image/nodebuild.py). A node pod runs it privileged in
the host's pid namespace with the host paths below; `kubectl crashcart` writes that pod spec
(crashcart/kube/) and the tests translate the same list into `docker run` / `ctr run`
(tests/testbed/nodeimage.py). Inside the image (NODE_ENV set), crashcart's CLI calls
prepare_node_container() before any root command: one clear line (exit 125) when the
container is not privileged or not in the host's pid namespace, then it joins the host's
cgroup namespace. A cgroup namespace of its own and no host network are fine.
"""

from __future__ import annotations

import os

from crashcart import __version__
from crashcart.errors import UsageError

# The image reference `kubectl crashcart` uses unless --node-image says otherwise: load the
# built tar into the nodes' runtime, or push it to a registry and pass --node-image.
NODE_IMAGE_REPO = "localhost/crashcart-node"
# Set in the node image's environment (crashcart/image/nodebuild.py): only where it is set
# does crashcart run prepare_node_container().
NODE_ENV = "CRASHCART_NODE_IMAGE"
# Where the default toolbox sits inside the node image (crashcart.defaults.DEFAULT_IMAGE).
NODE_TOOLBOX = "/var/lib/crashcart/crashcart.img"

# (host path, path in the node container, read-only). Measured by running the node image
# with docker (tests/testbed/nodeimage.py run_node) with one entry left out at a time:
HOST_PATHS: tuple[tuple[str, str, bool], ...] = (
    # Required. The runtimes' sockets and state (docker.sock, containerd's socket and task
    # bundles, /run/runc, podman's run root, CRI-O's /run/crio) and crashcart's own records
    # of toolboxes mounted into containers (/run/crashcart: a later `-u`, `status` or
    # `cleanup`, from another node pod or from the host, must see them). Without it: "no
    # container matches".
    ("/run", "/run", False),
    # Post-mortem sessions read an exited container's layers and config from the runtime's
    # storage. Without it: "3 of its 3 filesystem layers are gone". One per runtime; a host
    # without that runtime has none (the tests mount only those that exist).
    ("/var/lib/docker", "/var/lib/docker", True),
    ("/var/lib/containerd", "/var/lib/containerd", True),
    ("/var/lib/containers", "/var/lib/containers", True),
    # Post-mortem of a CRI pod's container shows its last log lines from here.
    ("/var/log/pods", "/var/log/pods", True),
    # Required. A session joins the target's cgroups: the runtime's own cgroup mount is the
    # node container's cgroup, not the host's. Without it: "the target's cgroup disappeared".
    ("/sys/fs/cgroup", "/sys/fs/cgroup", False),
    # Required. /dev/loop-control and the loop devices the toolbox mount uses; loop devices
    # appear after the container started, so the runtime's copy of /dev is not enough.
    # Without it: "cannot mount /var/lib/crashcart/crashcart.img (erofs): No such file".
    ("/dev", "/dev", False),
    # The audit log (one start and one end record per session, crashcart/audit.py) lands
    # where the host's own crashcart writes it, so it outlives the node pod.
    ("/var/log/crashcart", "/var/log/crashcart", False),
)


def default_node_image() -> str:
    return f"{NODE_IMAGE_REPO}:{__version__}"


# A node container that is not privileged lacks these (Docker's and the CRI's default
# capability sets have neither) and has a seccomp filter that refuses setns/mount/open_tree.
NEEDED_CAPS = ("sys_admin", "sys_ptrace")


def prepare_node_container(proc: str = "/proc") -> None:
    """What crashcart does first inside the node image (only where NODE_ENV is set): check
    the container is what a node pod is, then join the host's cgroup namespace."""
    check_node_container(proc)
    join_host_cgroup_namespace(proc)


def check_node_container(proc: str = "/proc") -> None:
    """Raise UsageError (one line: what is missing, how to run it) when this node container
    is not what a node pod is: privileged and in the host's pid namespace."""
    missing = _missing_privileges(_status(f"{proc}/self/status"))
    if missing:
        raise UsageError(
            f"the node container is not privileged ({missing})",
            hint="run it with --privileged (a pod: securityContext.privileged: true)",
        )
    if not in_host_pid_namespace(proc):
        raise UsageError(
            "the node container does not share the host's pid namespace: no container is "
            "reachable from it",
            hint="run it with --pid=host (a pod: hostPID: true)",
        )


def _status(path: str) -> dict[str, str]:
    with open(path) as f:
        return dict(line.rstrip("\n").partition(":")[::2] for line in f if ":" in line)


def _missing_privileges(status: dict[str, str]) -> str:
    """What `status` (/proc/self/status fields) lacks for crashcart, '' when nothing."""
    from crashcart.linux import caps

    effective = int(status.get("CapEff", "0").strip() or "0", 16)
    lacking = [f"CAP_{n.upper()}" for n in NEEDED_CAPS if not effective & caps.mask([n])]
    parts = ["lacks " + ", ".join(lacking)] if lacking else []
    if status.get("Seccomp", "0").strip() not in ("", "0"):
        parts.append("a seccomp filter is on")
    return "; ".join(parts)


def in_host_pid_namespace(proc: str = "/proc") -> bool:
    """Kernel threads (kthreadd is PID 2, parent 0) are visible only in the initial pid
    namespace. A node that is itself a container (kind) has none: there the host's PID 1
    is another container's process, in a mount namespace other than ours, while in a pid
    namespace of our own PID 1 is our container's entry point (ours, or the pod's)."""
    if in_initial_pid_namespace(proc):
        return True
    try:
        return os.readlink(f"{proc}/1/ns/mnt") != os.readlink(f"{proc}/self/ns/mnt")
    except PermissionError:
        return True  # PID 1 is not ours to look at: not our container's
    except OSError:
        return False


def join_host_cgroup_namespace(proc: str = "/proc") -> bool:
    """Join the cgroup namespace of the host's first process, if ours is another one.

    A node pod has a cgroup namespace of its own where the CRI gives one (containerd on a
    cgroup v2 host does, privileged or not: Kubernetes has no hostCgroupns). Seen from it,
    a target's /proc/PID/cgroup reads "0::/../../kubepods/..." and the host's hierarchy,
    mounted at /sys/fs/cgroup, has no such path: measured with `docker run
    --cgroupns=private`, the session failed with "the target's cgroup disappeared". In the
    host's cgroup namespace the paths are the host's, as for crashcart run on the node.
    kthreadd (PID 2) lives in the initial namespaces; on a node that is itself a container
    it does not show, and the node's PID 1 is the first process. setns(CLONE_NEWCGROUP)
    works in a multi-threaded process and needs CAP_SYS_ADMIN: the node pod is privileged.
    Returns True if it joined."""
    from crashcart.linux import libc

    first = "2" if in_initial_pid_namespace(proc) else "1"
    path = f"{proc}/{first}/ns/cgroup"
    try:
        if os.stat(path).st_ino == os.stat(f"{proc}/self/ns/cgroup").st_ino:
            return False
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False  # PID 1 is not ours to look at (these test machines): stay
    try:
        libc.setns(fd, libc.CLONE_NEWCGROUP)
    except OSError as e:
        raise UsageError(f"cannot join the host's cgroup namespace: {e.strerror}",
                         hint="run the node container privileged") from None  # fmt: skip
    finally:
        os.close(fd)
    return True


def in_initial_pid_namespace(proc: str = "/proc") -> bool:
    """kthreadd, PID 2 with parent 0, shows only in the initial pid namespace."""
    try:
        with open(f"{proc}/2/stat") as f:
            return f.read().startswith("2 (kthreadd) ")
    except OSError:
        return False
