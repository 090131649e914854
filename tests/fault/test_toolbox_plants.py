"""A hostile container plants code where the toolbox's tools would look for it (the
session's working directory is the container's, under /target; in sideload mode `/`, the
environment and HOME are the container's), and none of it runs. Each payload writes a file
into the container's /marks and prints PWNED:NAME when it runs. The audit behind the list:
docs/toolbox.md."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator

import pytest

from tests import ccrun
from tests.fault.conftest import RunFactory
from tests.image import toolbox_kit as tk
from tests.testbed import runtimes
from tests.testbed.runtimes import Container


def _sh(name: str) -> str:
    """A shell payload: marks NAME in the container's /marks, in either mode."""
    return (f"d=/target/marks; [ -d $d ] || d=/marks; echo ran > $d/{name}; "
            f"echo PWNED:{name}")  # fmt: skip


def _py(name: str) -> str:
    return ("import os\n"
            "d = '/target/marks' if os.path.isdir('/target/marks') else '/marks'\n"
            f"open(d + '/{name}', 'w').write('ran')\nprint('PWNED:{name}')\n")  # fmt: skip


PLANTS = {
    # session: the working directory, /target/plant
    "/plant/json.py": _py("python"),
    "/plant/.pdbrc": "!exec(" + repr(_py("pdb")) + ")\n",
    "/plant/.perldb": "system(q{" + _sh("perldb") + "});\n",
    "/plant/inplace.awk": 'BEGIN { system("' + _sh("gawk") + '") }\n',
    "/plant/inplace": 'BEGIN { system("' + _sh("gawk") + '") }\n',
    "/plant/.gdbinit": "shell " + _sh("gdb-cwd") + "\n",
    "/bin/busybox-gdb.gdb": "shell " + _sh("gdb-autoload") + "\n",
    "/bin/busybox-gdb.py": _py("gdb-autoload-py"),
    "/plant/.vimrc": f"call system('{_sh('vim-cwd')}')\n",
    "/plant/.exrc": f"call system('{_sh('vim-exrc')}')\n",
    "/plant/notes.txt": "notes\n# vim: set tabstop=3 :\n",
    "/plant/nse_main.lua": f"os.execute({_sh('nmap')!r})\n",
    "/plant/nselib/stdnse.lua": f"os.execute({_sh('nmap-lib')!r})\n",
    "/plant/.ltrace.conf": "int puts(string);\n",
    "/plant/ltrace.conf": "int puts(string);\n",
    # sideload: the container's environment points at these, and its /etc and HOME
    "/plant/lessopen.sh": "#!/bin/sh\n" + _sh("lessopen") + " >&2\n",
    "/plant/bashenv": _sh("bash-env") + "\n",
    "/plant/startup.py": _py("python-startup"),
    "/etc/gdb/gdbinit": "shell " + _sh("gdb-etc") + "\n",
    "/root/.gdbinit": "shell " + _sh("gdb-home") + "\n",
    "/etc/vim/vimrc": f"call system('{_sh('vim-etc')}')\n",
    "/root/.vimrc": f"call system('{_sh('vim-home')}')\n",
}
HOSTILE_ENV = ("LESSOPEN=|/plant/lessopen.sh %s", "BASH_ENV=/plant/bashenv", "ENV=/plant/bashenv",
               "PYTHONSTARTUP=/plant/startup.py", "PYTHONPATH=/plant")  # fmt: skip


def _plant(c: Container) -> None:
    script = ["mkdir -p /marks /plant/nselib /etc/gdb /etc/vim /root"]
    for path, text in PLANTS.items():
        script.append(f"printf %s {shlex.quote(text)} > {path}")
    script.append("chmod 755 /plant/lessopen.sh; chmod 644 /plant/.perldb")
    res = runtimes.exec_in(c, ["/bin/sh", "-c", "; ".join(script)])
    assert res.returncode == 0, res.stderr


def _hostile(factory: RunFactory, runtime: str) -> Container:
    env = [a for kv in HOSTILE_ENV for a in ("-e", kv)]
    # podman refuses a -w that is not in the image: PID 1 makes its own working directory
    start = "mkdir -p /plant && cd /plant && exec /bin/sleep 3600"
    c = factory(*env, runtime=runtime, image="busybox", command=("/bin/sh", "-c", start))
    _plant(c)
    return c


@pytest.fixture(scope="module")
def hostile() -> Iterator[Container]:
    """One docker busybox container with every plant; its working directory is /plant."""
    factory = RunFactory("plants")
    try:
        yield _hostile(factory, "docker")
    finally:
        factory.close()


@pytest.fixture(autouse=True)
def _no_marks(request: pytest.FixtureRequest) -> None:
    """Each test starts with an empty /marks (an earlier failure leaves its marks)."""
    if "hostile" in request.fixturenames:
        c: Container = request.getfixturevalue("hostile")
        for name in _marks(c):
            os.unlink(f"/proc/{c.pid}/root/marks/{name}")


def _marks(c: Container) -> list[str]:
    return sorted(os.listdir(f"/proc/{c.pid}/root/marks"))


def _assert_nothing_ran(c: Container, out: str) -> None:
    assert "PWNED:" not in out and not _marks(c), f"marks {_marks(c)}; output:\n{out}"


def _session(c: Container, *argv: str, image: str, env: tuple[str, ...] = ()) -> str:
    proc = tk.session(c, *argv, image=image, env=env)
    return ccrun.text(proc) + proc.stderr.decode(errors="replace")


SESSION_CASES = {
    "python": ["python3", "-c", "import json; json.dumps(1)"],
    "python-m": ["python3", "-m", "json.tool", "/target/etc/passwd"],
    "pydoc": ["pydoc3", "json"],
    "pdb": ["python3", "-m", "pdb", "-c", "quit", "-m", "calendar"],
    "gawk": ["gawk", "-i", "inplace", "BEGIN { exit }"],
    "gdb": ["gdb", "-batch", "-ex", "info sharedlibrary", "/target/bin/busybox"],
    "gdb-attach": ["gdb", "-batch", "-p", "1", "-ex", "bt"],
    "vim": ["vim", "--not-a-term", "-c", "qa!", "notes.txt"],
    "nmap": ["nmap", "--script-help", "default"],
    "bash": ["bash", "-c", "true"],
    "sh": ["sh", "-c", "true"],
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SESSION_CASES))
def test_session_tools_load_nothing_from_the_container(hostile: Container, case: str) -> None:
    with tk.untouched(hostile):
        out = _session(hostile, *SESSION_CASES[case], image=tk.default_image())
        _assert_nothing_ran(hostile, out)


def test_perl_debugger_ignores_the_directorys_perldb(hostile: Container) -> None:
    """perl -d ran ./.perldb: root owns it, which is all perl5db.pl checks."""
    with tk.untouched(hostile):
        out = _session(hostile, "perl", "-d", "-e", "1", image=tk.default_image(),
                       env=("PERLDB_OPTS=NonStop=1",))  # fmt: skip
        _assert_nothing_ran(hostile, out)


def test_gdb_minimal_loads_nothing_from_the_container(hostile: Container) -> None:
    with tk.untouched(hostile):
        out = _session(hostile, "gdb", "-batch", "-ex", "info sharedlibrary",
                       "/target/bin/busybox", image=tk.minimal_image())  # fmt: skip
        out += _session(hostile, "gdb", "-batch", "-p", "1", image=tk.minimal_image())
        _assert_nothing_ran(hostile, out)


def test_vim_ignores_modelines_of_the_containers_files(hostile: Container) -> None:
    with tk.untouched(hostile):
        out = _session(hostile, "bash", "-c", "vim --not-a-term -c \"call writefile([&tabstop], "
                       "'/tmp/ts')\" -c 'qa!' notes.txt >/dev/null; echo TS=$(cat /tmp/ts)",
                       image=tk.default_image())  # fmt: skip
        _assert_nothing_ran(hostile, out)
    assert "TS=8" in out, out  # not the modeline's 3


def test_ltrace_and_nmap_open_no_file_of_the_directory(hostile: Container) -> None:
    """Their data files (nmap-services, NSE, ltrace.conf) come from the toolbox: strace
    shows no open of the planted ones."""
    script = ("strace -f -qq -e trace=open,openat -o /tmp/t ltrace -c true >/dev/null 2>&1; "
              "strace -f -qq -e trace=open,openat -o /tmp/n nmap --script-help default "
              ">/dev/null 2>&1; cat /tmp/t /tmp/n")  # fmt: skip
    with tk.untouched(hostile):
        out = _session(hostile, "bash", "-c", script, image=tk.default_image())
        _assert_nothing_ran(hostile, out)
    loaded = [ln for ln in out.splitlines() if ("ltrace.conf" in ln or "nse_main.lua" in ln)
              and "= -1 " not in ln and ('"./' in ln or "/plant/" in ln)]  # fmt: skip
    assert "ltrace.conf" in out and "nse_main.lua" in out and not loaded, loaded


def test_git_is_not_in_the_toolbox(hostile: Container) -> None:
    """git would run a repository's hooks, core.fsmonitor and core.pager as root: the
    recipes leave it out (docs/toolbox.md)."""
    for image in (tk.default_image(), tk.minimal_image()):
        proc = tk.session(hostile, "git", "--version", image=image)
        assert proc.returncode == 127, proc.stderr


SIDELOAD_CASES = {
    "python": ["/dev/crashcart/shell", "python3", "-c", "import json"],
    "python-i": ["/dev/crashcart/shell", "python3", "-i"],
    "bash": ["/dev/crashcart/bin/bash", "-c", "true"],
    "shell": ["/dev/crashcart/shell", "true"],
    "less": ["/dev/crashcart/shell", "less", "/etc/passwd"],
    "gdb": ["/dev/crashcart/shell", "gdb", "-batch", "-ex", "info sharedlibrary"],
    "vim": ["/dev/crashcart/shell", "vim", "--not-a-term", "-c", "qa!", "/plant/notes.txt"],
    "vim-direct": ["/dev/crashcart/usr/bin/vim", "--not-a-term", "-c", "qa!", "/plant/notes.txt"],
}


def test_sideload_tools_load_nothing_from_the_container(hostile: Container) -> None:
    """Through `docker exec`: the container's environment (LESSOPEN, BASH_ENV, PYTHONPATH,
    PYTHONSTARTUP), its /etc/gdb/gdbinit and /etc/vim/vimrc, its ~/.gdbinit and ~/.vimrc."""
    image = tk.default_image()
    outs = {}
    with tk.untouched(hostile):
        with tk.sideloaded(hostile, image):
            for case, argv in SIDELOAD_CASES.items():
                outs[case] = tk.sideload_run(hostile, argv)
        _assert_nothing_ran(hostile, "\n".join(f"{k}: {v}" for k, v in outs.items()))


def test_python_on_podman(run_container: RunFactory) -> None:
    c = _hostile(run_container, "podman")
    image = tk.default_image()
    with tk.untouched(c):
        out = _session(c, "python3", "-c", "import json", image=image)
        with tk.sideloaded(c, image):
            out += tk.sideload_run(c, ["/dev/crashcart/shell", "python3", "-c", "import json"])
        _assert_nothing_ran(c, out)
