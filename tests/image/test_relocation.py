"""Relocated toolbox programs run from /dev/crashcart in containers with no glibc.

Each test mounts a real built image at <rootfs>/dev/crashcart in fresh mount, pid and net
namespaces, chroots into a busybox-only or a musl rootfs (the container's `/`) and runs the
toolbox's programs from /dev/crashcart with the container's clean environment, the way
`docker exec CTR /dev/crashcart/...` does. A target process (an HTTP server on
127.0.0.1:8080) runs in the same pid namespace.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.image.conftest import RootfsFactory, loop_devices_for, sandbox

pytestmark = [pytest.mark.image, pytest.mark.slow]

# Starts the rootfs's server as the target and waits until it listens; $T is its PID.
START_TARGET = {
    "busybox": "/bin/busybox httpd -f -p 127.0.0.1:8080 -h /www & T=$!",
    "musl": "/usr/local/bin/server musl 8080 & T=$!",
}
WAIT = (
    "for i in $(seq 50); do /bin/busybox nc -z 127.0.0.1 8080 2>/dev/null && break; sleep 0.1; done"
)

TOOLS = r"""
set -e
# the musl rootfs has few busybox links: grep, seq, sleep ... come from the toolbox
export PATH=$PATH:/dev/crashcart/usr/bin
{start}
{wait}
B=/dev/crashcart/usr/bin
echo "target=$T"
$B/bash -c 'echo "bash=$BASH_VERSION"'
$B/strace -f -qq -e trace=execve -o /tmp/st /bin/busybox true && grep -c execve /tmp/st
$B/gdb -q -batch -p $T -ex 'info inferiors' 2>&1 | grep -m1 "process $T"
$B/lsof -l -n -P -p $T | grep -m1 -E 'LISTEN|TCP'
$B/ps -e -o pid=,comm= | grep -w "$T"
$B/ip -brief address show lo
/dev/crashcart/shell tcpdump -i lo -nn -l -c 2 icmp >/tmp/cap 2>/dev/null &
sleep 0.5
/bin/busybox ping -c 2 -W 1 127.0.0.1 >/dev/null
wait $!
grep -c 'ICMP echo' /tmp/cap
"""


def _tools_script(name: str, extra: str = "") -> str:
    return TOOLS.format(start=START_TARGET[name], wait=WAIT) + extra


def _assert_tools(out: str) -> None:
    target = re.search(r"target=(\d+)", out)
    assert target, out
    pid = target.group(1)
    assert "bash=5." in out
    assert f"process {pid}" in out  # gdb attached to the target's own PID
    assert ":8080" in out  # lsof saw the listening socket
    assert re.search(rf"^\s*{pid} ", out, re.M)  # ps from the toolbox sees the target
    assert "127.0.0.1/8" in out  # ip
    assert re.search(r"^2$", out, re.M)  # tcpdump captured both echo requests


@pytest.mark.parametrize("name", ["busybox", "musl"])
def test_minimal_tools_run_without_glibc(minimal_image: Path, rootfs: RootfsFactory,
                                         name: str) -> None:  # fmt: skip
    root = rootfs(name)
    assert not list(root.glob("**/libc.so.6")), "the rootfs must have no glibc"
    out = sandbox("sideload", root, minimal_image, _tools_script(name)).check()
    _assert_tools(out)


DEFAULT_EXTRA = r"""
$B/python3 -c 'import ssl, json, sqlite3, ctypes, sys; print("python", sys.prefix)'
$B/curl -sS http://127.0.0.1:8080/ | head -c 200; echo
$B/gdb -q -batch -ex 'python print("gdb-python", 6 * 7)'
# perl's @INC is compiled in: it needs PERL5LIB from env.sh (rc file, /shell, helpers)
/dev/crashcart/shell perl -MPOSIX -e 'print "perl ", POSIX::floor(2.5), "\n"'
$B/dig -v 2>&1
/dev/crashcart/shell zsh -c 'autoload -Uz compinit; compinit -u -d /tmp/zc;
    (( $+_comps[ls] )) && echo zsh-completion-ok'
printf '\xc3\xa9' | /dev/crashcart/shell iconv -f UTF-8 -t CP1252 | od -An -tx1
/dev/crashcart/shell check-tools -q
"""


@pytest.mark.parametrize("name", ["busybox", "musl"])
def test_default_tools_run_without_glibc(default_image: Path, rootfs: RootfsFactory,
                                         name: str) -> None:  # fmt: skip
    out = sandbox("sideload", rootfs(name), default_image,
                  _tools_script(name, DEFAULT_EXTRA)).check()  # fmt: skip
    _assert_tools(out)
    assert "python /dev/crashcart/usr" in out  # no PYTHONHOME needed: found from argv[0]
    assert "gdb-python 42" in out
    assert "perl 2" in out
    assert "zsh-completion-ok" in out  # module_path and fpath from ZDOTDIR/.zshenv
    assert " e9" in out  # iconv through GCONV_PATH (trimmed module set, rebuilt cache)
    assert re.search(r"(?i)<html|crashcart|busybox|musl", out)  # curl fetched the page
    assert re.search(r"^(\d+)/\1 tools work$", out, re.M), out


def test_compatibility_shell_paths(minimal_image: Path, rootfs: RootfsFactory) -> None:
    """The original crashcart's documented entry point, and ours, with a clean env."""
    root = rootfs("busybox")
    script = (
        "/dev/crashcart/profile/bin/bash --rcfile /dev/crashcart/.crashcartrc -i -c true"
        " && echo profile-ok; /dev/crashcart/shell true && echo shell-ok;"
        " /dev/crashcart/shell sh -c 'echo $PATH'"
    )
    out = sandbox("sideload", root, minimal_image, script, shell="/bin/sh").check()
    assert "profile-ok" in out and "shell-ok" in out
    # toolbox first, then the container's own directories
    assert "/dev/crashcart/usr/local/sbin:" in out and ":/usr/local/sbin:" in out


HELPERS = r"""
{start}
{wait}
echo "target=$T"
export CRASHCART_TARGET_PID=$T
cd /tmp
check-tools; echo "check-tools=$?"
debug-process --help | head -1
debug-process -batch -ex 'info inferiors' 2>&1 | grep -m1 "process $T"
timeout 2 trace-process $T -e trace=%network >/tmp/tp 2>&1 & J=$!; sleep 0.7
/bin/busybox wget -q -O /dev/null http://127.0.0.1:8080/ ; wait $J
grep -m1 -E 'accept|attached' /tmp/tp
timeout 2 trace-network >/tmp/tn 2>&1 & J=$!; sleep 0.7
/bin/busybox wget -q -O /dev/null http://127.0.0.1:8080/ ; wait $J
grep -m1 -o -E 'accept4?\(' /tmp/tn
timeout 1 trace-files $T >/dev/null 2>&1; echo "trace-files=$?"
list-files | grep -m1 -o 'TCP 127.0.0.1:8080 (LISTEN)'
network-status | grep -E 'pid=|nameserver|^== '
debug-in-ns $T /bin/busybox cat /proc/self/status | grep -m1 '^Pid'
debug-in-ns 99999 true; echo "bad-pid=$?"
trace-process 99999; echo "bad-pid2=$?"
network-capture --help | head -1
container-shell true; echo "container-shell=$?"
"""


def test_helpers_act_on_target_pids(minimal_image: Path, rootfs: RootfsFactory) -> None:
    root = rootfs("busybox")
    script = ". /dev/crashcart/.crashcart/env.sh\n" + HELPERS.format(
        start=START_TARGET["busybox"], wait=WAIT
    )
    out = sandbox("sideload", root, minimal_image, script).out
    pid = re.search(r"target=(\d+)", out)
    assert pid, out
    t = pid.group(1)
    assert "check-tools=0" in out and "10/10 tools work" in out, out
    assert "usage: debug-process" in out
    assert f"process {t}" in out, out
    assert re.search(r"accept|attached", out), out
    assert "trace-files=124" in out, out  # ran until the timeout: it was attached
    assert "TCP 127.0.0.1:8080 (LISTEN)" in out
    assert f'users:(("busybox",pid={t},' in out  # ss names the owner by the target's PID
    assert "nameserver 192.0.2.53" in out  # the target's resolv.conf
    assert "bad-pid=2" in out and "no process 99999 in the target's pid namespace" in out
    assert "bad-pid2=2" in out
    assert "usage: network-capture" in out
    assert "container-shell=0" in out


SESSION = r"""
echo "mode=$CRASHCART_MODE"
{start}
{wait}
echo "target=$T"
check-tools -q; echo "check-tools=$?"
cat /etc/resolv.conf
ps -e -o pid= | grep -qw "$T" && echo ps-sees-target
ls /target/www >/dev/null && echo target-root-ok
container-shell /bin/busybox sh -c \
    'cat /etc/hostname; echo "inner-mode=$CRASHCART_MODE"; command -v strace'
readlink /dev/crashcart/usr/bin/sh
"""


def test_session_mode_toolbox_at_root(minimal_image: Path, rootfs: RootfsFactory) -> None:
    """Toolbox as `/` and at /dev/crashcart, the target's root at /target."""
    root = rootfs("busybox")
    start = "chroot /target /bin/busybox httpd -f -p 127.0.0.1:8080 -h /www & T=$!"
    wait = WAIT.replace("/bin/busybox", "chroot /target /bin/busybox")
    script = SESSION.format(start=start, wait=wait)
    out = sandbox("session", root, minimal_image,
                  f"source /.crashcartrc; {script}", shell="/usr/bin/bash").check()  # fmt: skip
    assert "mode=session" in out
    assert "check-tools=0" in out, out
    assert "nameserver 192.0.2.53" in out  # /etc/resolv.conf -> ../target/etc/resolv.conf
    assert "ps-sees-target" in out and "target-root-ok" in out
    assert "testbox" in out and "inner-mode=container" in out
    assert "/dev/crashcart/usr/bin/strace" in out, out


def test_no_loop_device_left(minimal_image: Path) -> None:
    # erofs mounts straight from the file; the sandbox runs above bound none.
    assert loop_devices_for(minimal_image) == ""
