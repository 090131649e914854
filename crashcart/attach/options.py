"""What the user asked of a session, as plain data."""

from __future__ import annotations

from crashcart.defaults import DEFAULT_IMAGE, default_image

__all__ = ["DEFAULT_IMAGE", "default_image", "SessionOptions", "PROFILES", "DEBUG_CAPS"]

SESSION_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RC_FILE = "/.crashcartrc"

# Capability profiles. "default" keeps what the target itself may do plus what the
# debugging tools need on it: ptrace (strace, gdb, lsof), raw sockets and interface
# settings (tcpdump, ping, ip), reading any file and process entry (lsof, ps), signals.
# Not dac_read_search: dac_override already reads any file and directory, and
# dac_read_search in the host's user namespace also opens files *by handle*
# (open_by_handle_at) on any filesystem with a mount in the session -- the host's root
# filesystem through docker's /etc/hosts bind (tests/fault/test_creds.py).
PROFILES = ("default", "restricted", "privileged")
DEBUG_CAPS = (
    "sys_ptrace", "net_raw", "net_admin", "dac_override", "kill", "setuid", "setgid",
    "chown", "fowner", "sys_chroot",
)  # fmt: skip


class SessionOptions:
    def __init__(
        self,
        command: list[str] | None = None,  # empty: the interactive toolbox shell
        image: str | None = None,
        tty: bool | None = None,  # None: a pty exactly when stdin and stdout are terminals
        workdir: str | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,  # UID[:GID], or a name from the target's /etc/passwd
        caps: str = "default",
        join_cgroup: bool = True,
        allow_host: bool = False,
        quiet: bool = False,
        debug: bool = False,
        in_place: bool = False,  # the target's own mount namespace and root (-e for a PID)
    ) -> None:
        self.command = command or []
        self.image = image or default_image()
        self.tty = tty
        self.workdir = workdir
        self.env = env or {}
        self.user = user
        self.caps = caps
        self.join_cgroup = join_cgroup
        self.allow_host = allow_host
        self.quiet = quiet
        self.debug = debug
        self.in_place = in_place
