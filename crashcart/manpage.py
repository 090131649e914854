"""crashcart(1), generated from `crashcart --help` (cli.USAGE), so the two cannot drift.

USAGE is parsed into its parts (synopsis, description paragraphs, the option list, the exit
status); the page adds what a help screen has no room for (files, environment). The shell
completions (crashcart/completion.py) take their option descriptions from the same parse.
`crashcart man` shows the page (through man -l when stdout is a terminal, else prints it).
"""

from __future__ import annotations

import os
import sys

from crashcart import __version__

DESC_COLUMN = 22  # where an option's description starts in USAGE

FILES = [
    ("/var/lib/crashcart/crashcart.img", "the default toolbox image (crashcart image build)"),
    (
        "/etc/crashcart/crashcart.conf",
        "configuration: audit_dir, audit_required, "
        "audit_max_bytes, audit_keep, audit_syslog (key = value lines)",
    ),
    (
        "/var/log/crashcart/audit.log",
        "the audit trail: a start and an end JSON line for every "
        "session, -m, -u, -e and cleanup; rotated to audit.log.1 ... by size",
    ),
    ("/run/crashcart", "records of toolboxes mounted in containers (crashcart status, cleanup)"),
]
ENVIRONMENT = [
    ("CRASHCART_IMAGE", "the toolbox image when --image is not given"),
    ("CRASHCART_CONFIG", "another configuration file than /etc/crashcart/crashcart.conf"),
    ("CRASHCART_AUDIT_DIR", "another directory for the audit log"),
    ("CRASHCART_AUDIT_REQUIRED", "yes: refuse to run when the audit record cannot be written"),
    ("DOCKER_HOST", "unix://PATH: the Docker API socket"),
]


class Option:
    def __init__(self, spec: str, lines: list[str]) -> None:
        self.spec = spec  # "-w, --workdir DIR"
        self.lines = lines  # the description, as in USAGE (deeper lines keep their indent)

    def _entries(self) -> list[tuple[list[str], str]]:
        """(names, text) of each option documented here: the spec, and segments of the first
        line such as `;  -T, --no-tty: never`."""
        segments = self.lines[0].split(";") if self.lines else [""]
        out = [(_names(self.spec), segments[0])]
        for seg in segments[1:]:
            spec, colon, what = seg.strip().partition(":")
            if colon and spec.startswith("-"):
                out.append((_names(spec), what.strip()))
        return out

    @property
    def names(self) -> list[str]:
        return [name for names, _ in self._entries() for name in names]

    def summary(self, name: str) -> str:
        """A short description of `name`: its first line up to a parenthesis."""
        for names, text in self._entries():
            if name in names:
                return text.split(" (")[0].rstrip(":").strip()
        return ""


def _names(spec: str) -> list[str]:
    return [w for w in spec.replace(",", " ").split() if w.startswith("-")]


class Help:
    """cli.USAGE, in parts."""

    def __init__(self, usage: str) -> None:
        blocks = usage.split("\n\n")
        self.synopsis = [line.removeprefix("usage: ").strip() for line in blocks[0].splitlines()]
        self.paragraphs: list[str] = []
        self.options: list[Option] = []
        self.exit_status = ""
        for block in blocks[1:]:
            if block.startswith("options:"):
                self.options = _options(block.splitlines()[1:])
            elif block.startswith("Exit status:"):
                self.exit_status = _join(block.removeprefix("Exit status:"))
            else:
                self.paragraphs.append(_join(block))

    def option(self, name: str) -> Option | None:
        for opt in self.options:
            if name in opt.names:
                return opt
        return None


def _join(block: str) -> str:
    return " ".join(block.split())


def _options(lines: list[str]) -> list[Option]:
    out: list[Option] = []
    for line in lines:
        if line.startswith("  -"):
            spec, _, desc = line[2:].partition("  ")
            out.append(Option(spec.strip(), [desc.strip()]))
        elif out:
            indent = len(line) - len(line.lstrip())
            extra = line[DESC_COLUMN:] if indent >= DESC_COLUMN else line.strip()
            out[-1].lines.append(extra.rstrip())
    return out


def help_text() -> Help:
    from crashcart.cli import USAGE

    return Help(USAGE)


# ---------------------------------------------------------------------------------------------
# roff


def _esc(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _option_body(opt: Option) -> list[str]:
    """Wrapped lines are joined; lines indented deeper (the --caps table) stay as they are."""
    out: list[str] = []
    pre: list[str] = []
    for line in opt.lines:
        if line.startswith(" "):
            pre.append(_esc(line))
            continue
        if pre:
            out += [".RS", ".nf", *pre, ".fi", ".RE"]
            pre = []
        out.append(_esc(line.strip()))
    if pre:
        out += [".RS", ".nf", *pre, ".fi", ".RE"]
    return out


def roff(h: Help | None = None) -> str:
    h = h or help_text()
    out = [
        f'.TH CRASHCART 1 "" "crashcart {__version__}" "User Commands"',
        ".nh",
        ".ad l",
        ".SH NAME",
        "crashcart \\- debug a running container that has no tools",
        ".SH SYNOPSIS",
        ".nf",
        *(_esc(line) for line in h.synopsis),
        ".fi",
        ".SH DESCRIPTION",
    ]
    for paragraph in h.paragraphs:
        out += [".PP", _esc(paragraph)]
    out.append(".SH OPTIONS")
    for opt in h.options:
        out += [".TP", f".B {_esc(opt.spec)}", *_option_body(opt)]
    out += [".SH EXIT STATUS", _esc(h.exit_status), ".SH FILES"]
    for path, what in FILES:
        out += [".TP", f".I {_esc(path)}", _esc(what)]
    out.append(".SH ENVIRONMENT")
    for name, what in ENVIRONMENT:
        out += [".TP", f".B {name}", _esc(what)]
    out += [".SH SEE ALSO", "\\fBdocker\\-exec\\fR(1), \\fBnsenter\\fR(1), \\fBasciinema\\fR(1)"]
    return "\n".join(out) + "\n"


def main() -> int:
    page = roff()
    if not os.isatty(1):
        sys.stdout.write(page)
        return 0
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".1") as f:
        f.write(page)
        f.flush()
        try:
            return subprocess.run(["man", "-l", f.name]).returncode
        except FileNotFoundError:
            sys.stdout.write(page)
            return 0
