"""Command line entry point (placeholder: the attach CLI is being written)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "image":
        from crashcart.image.cli import main as image_main

        return image_main(args[1:])
    print("crashcart: not implemented yet", file=sys.stderr)
    return 125
