"""`crashcart image build|info|node`.

Imports only argparse at module level: the builder's modules load when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn

from crashcart.defaults import DEFAULT_IMAGE as DEFAULT_OUTPUT  # noqa: E402
from crashcart.errors import CrashcartError, UsageError

RECIPE_HELP = """\
recipes:
  default   gdb, strace, ltrace, lsof, perf, tcpdump, ip/ss, nmap, dig, curl, python3, perl,
            vim, tmux ... (55 packages, ~140 MiB)
  minimal   bash, busybox, strace, gdb-minimal, iproute2, procps, lsof, tcpdump
  full      default + bpftrace + tshark (~270 MiB)
  FILE      your own recipe, a plain text file:
              # comment
              suite = bookworm            (settings: suite, mirror, variant, format,
              include = default            description, include)
              gdb strace htop              (Debian package names)
              tool: htop --version         (check-tools probe: must exit 0)
              tool: ca = openssl version   (probe with an explicit name)

The image is relocated to run from /dev/crashcart inside any container (glibc or not).
.debs are cached in /var/cache/crashcart/debs between builds.
"""


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="crashcart image", description="toolbox images")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "build",
        help="build a toolbox image",
        epilog=RECIPE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--recipe", help="default, minimal, full or a recipe FILE")
    b.add_argument("--suite", help="Debian suite (default: the recipe's, bookworm)")
    b.add_argument("--mirror", help="Debian mirror URL (default: http://deb.debian.org/debian)")
    b.add_argument(
        "--format",
        dest="fmt",
        choices=("erofs", "squashfs", "ext4"),
        help="erofs (lz4hc; the default where the kernel has erofs), squashfs (zstd), ext4",
    )
    b.add_argument("--output", "-o", default=DEFAULT_OUTPUT, help=f"default {DEFAULT_OUTPUT}")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--from-rootfs", metavar="DIR", help="turn a root filesystem into an image")
    src.add_argument(
        "--from-image", metavar="REF", help="docker://REF, podman://REF or oci-archive:PATH"
    )
    b.add_argument("--no-cache", action="store_true", help="do not use or fill the .deb cache")
    b.add_argument("--keep-workdir", action="store_true", help="keep the scratch rootfs")
    n = sub.add_parser(
        "node",
        help="build the node image (crashcart + a toolbox) as a container image tar",
        description="One tar that docker load, podman load and ctr images import all take.",
    )
    n.add_argument("--output", "-o", required=True, help="the image tar to write")
    n.add_argument("--toolbox", default=DEFAULT_OUTPUT, help=f"default {DEFAULT_OUTPUT}")
    n.add_argument("--tag", help="NAME:TAG (default: crashcart's node image at this version)")
    n.add_argument("--suite", help="Debian suite of the userland (default: bookworm)")
    n.add_argument("--mirror", help="Debian mirror URL (default: http://deb.debian.org/debian)")
    n.add_argument("--no-cache", action="store_true", help="do not use or fill the .deb cache")
    i = sub.add_parser("info", help="print an image's manifest and size")
    i.add_argument("path", nargs="?", default=DEFAULT_OUTPUT)
    i.add_argument("--json", action="store_true", help="the whole manifest as JSON")
    return parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """A usage error is crashcart's own failure (125), printed like every other one by
        crashcart's main(), never argparse's exit 2."""
        raise UsageError(message, hint=f"see {self.prog} --help")


def main(argv: list[str]) -> int:
    """`crashcart image ...`; errors propagate to crashcart.cli.main, which prints them."""
    args = _parser().parse_args(argv)
    if args.command == "build":
        return _build(args)
    if args.command == "node":
        return _node(args)
    return _info(args)


def _build(args: argparse.Namespace) -> int:
    from crashcart.image.build import BuildOptions, build
    from crashcart.image.progress import Progress

    opts = BuildOptions(
        recipe=args.recipe,
        suite=args.suite,
        mirror=args.mirror,
        fmt=args.fmt,
        output=args.output,
        from_rootfs=args.from_rootfs,
        from_image=args.from_image,
        keep_workdir=args.keep_workdir,
    )
    if args.no_cache:
        opts.cache_dir = None
    result = build(opts, Progress())
    _cache_digest(result.output)
    reloc = result.manifest["relocation"]
    print(
        f"{result.output}: {result.size / 2**20:.1f} MiB, {result.manifest['format']}, "
        f"{len(result.manifest['packages'])} packages, {len(result.manifest['tools'])} tools"
    )
    for line in problem_lines(reloc.get("not_relocated", [])):
        print(f"  not relocated: {line}")
    return 0


def _node(args: argparse.Namespace) -> int:
    from crashcart.image.nodebuild import NodeOptions, build_node
    from crashcart.image.progress import Progress

    opts = NodeOptions(output=args.output, toolbox=args.toolbox, tag=args.tag)
    if args.suite:
        opts.suite = args.suite
    if args.mirror:
        opts.mirror = args.mirror
    if args.no_cache:
        opts.cache_dir = None
    progress = Progress()
    image = build_node(opts, progress)
    took = sum(progress.timings.values())
    print(f"{image.path}: {image.size / 2**20:.1f} MiB, image {image.config_digest[:19]}, "
          f"manifest {image.manifest_digest}, {took:.0f} s")  # fmt: skip
    return 0


def _cache_digest(image: str) -> None:
    """Hash the new image now, for the audit log, so the first session does not."""
    from crashcart import audit

    try:
        audit.toolbox_digest(audit.load_config(), image, compute=True)
    except CrashcartError:
        pass  # a broken crashcart.conf: the session will say so


def problem_lines(problems: list[str]) -> list[str]:
    """One line per thing to fix: programs that lack the same interpreter are one line
    (a missing bash is one problem, not eleven)."""
    marker = ": interpreter "
    by_interp: dict[str, list[str]] = {}
    lines: list[str] = []
    for problem in problems:
        path, found, rest = problem.partition(marker)
        if found and rest.endswith(" is not in the image"):
            interp = rest.removesuffix(" is not in the image")
            if interp not in by_interp:
                lines.append(interp)  # a placeholder, keeps the order of first sight
            by_interp.setdefault(interp, []).append(path)
        else:
            lines.append(problem)
    return [_interp_line(line, by_interp[line]) if line in by_interp else line for line in lines]


def _interp_line(interp: str, paths: list[str]) -> str:
    if len(paths) == 1:
        return f"{paths[0]}: interpreter {interp} is not in the image"
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return f"{len(paths)} programs need {interp}, which is not in the image: {shown}"


def _info(args: argparse.Namespace) -> int:
    from crashcart.image import manifest

    data = manifest.read_manifest(args.path)
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        sys.stdout.write(manifest.summary(data, args.path))
    return 0
