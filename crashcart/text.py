"""Text that came from a container, made safe to print or to hand to a shell.

A container controls process titles, comm, file names, symlink targets and its working
directory; any of them may carry escape sequences (a forged red line, a window title, a
cursor move) or a newline that fakes a line of crashcart's. Everything crashcart prints
that a container could have chosen goes through printable(); everything it writes for an
operator to paste into a shell goes through shell_quote().
"""

from __future__ import annotations

# C0 controls, DEL, C1 controls, and the Unicode line/paragraph separators and bidi
# overrides a terminal or a reader could take for structure.
_SPECIAL = {0x7F, 0x85, 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def _bad(c: str, keep: str) -> bool:
    o = ord(c)
    return (o < 0x20 and c not in keep) or 0x80 <= o < 0xA0 or o in _SPECIAL


def printable(text: str, keep: str = "") -> str:
    """`text` with every control character escaped as \\xNN / \\uNNNN: it can be read,
    and it never moves the cursor or starts a line. `keep` lists controls to leave alone."""
    if text.isprintable():
        return text
    out = []
    for c in text:
        if _bad(c, keep) or c == "\ufeff":
            o = ord(c)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(c)
    return "".join(out)


def safe_output(text: str) -> str:
    """Last line of defence for whatever crashcart prints: newlines and tabs stay (the
    message's own structure), every other control is escaped."""
    return printable(text, keep="\n\t")


_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./_-")


def shell_quote(word: str) -> str:
    """One word for a POSIX shell (what shlex.quote does; shlex imports re)."""
    if word and all(c in _PLAIN for c in word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def shell_line(argv: list[str]) -> str:
    return " ".join(shell_quote(printable(a)) for a in argv)
