"""`crashcart image build`: recipe (or rootfs, or container image) -> relocated image file.

Steps: install packages (mmdebstrap) or unpack the given rootfs/image into a scratch
directory, record the package list, trim, add crashcart's files, relocate under
/dev/crashcart, write the manifest, pack. The output is written next to its final name and
renamed over it, so a session that has the old image mounted keeps its (old) inode.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from crashcart.defaults import DEFAULT_IMAGE as DEFAULT_OUTPUT  # noqa: E402
from crashcart.errors import ImageError
from crashcart.image import bootstrap, layout, manifest, oci, pack, relocate, rootpath, trim
from crashcart.image.progress import Progress
from crashcart.image.recipe import Recipe, Tool, load_recipe

WORK_BASE = "/var/tmp"
# Measured peak of the default recipe: ~750 MB unpacked before trimming, plus the image.
MIN_WORK_SPACE = 1536 << 20
MIN_OUTPUT_SPACE = 400 << 20


@dataclass
class BuildOptions:
    recipe: str | None = None
    suite: str | None = None
    mirror: str | None = None
    fmt: str | None = None
    output: str = DEFAULT_OUTPUT
    from_rootfs: str | None = None
    from_image: str | None = None
    work_base: str = WORK_BASE
    cache_dir: str | None = bootstrap.CACHE_DIR
    keep_workdir: bool = False


@dataclass
class BuildResult:
    output: str
    size: int
    manifest: manifest.Manifest
    timings: dict[str, float] = field(default_factory=dict)
    rootfs: str | None = None  # the scratch rootfs, when kept (--keep-workdir)


@dataclass
class _Plan:
    recipe: Recipe
    source: str
    suite: str | None
    mirror: str | None
    fmt: str


def plan(opts: BuildOptions) -> _Plan:
    """Resolve recipe and settings; command-line options beat recipe settings."""
    if opts.from_rootfs and opts.from_image:
        raise ImageError("--from-rootfs and --from-image exclude each other")
    from_existing = opts.from_rootfs or opts.from_image
    recipe = load_recipe(opts.recipe or "default")
    fmt = opts.fmt or recipe.setting("format", "") or pack.default_format()
    if from_existing:
        source = f"rootfs:{opts.from_rootfs}" if opts.from_rootfs else f"image:{opts.from_image}"
        return _Plan(recipe, source, None, None, fmt)
    suite = opts.suite or recipe.setting("suite", bootstrap.DEFAULT_SUITE)
    mirror = opts.mirror or recipe.setting("mirror", bootstrap.DEFAULT_MIRROR)
    return _Plan(recipe, "mmdebstrap", suite, mirror, fmt)


def build(opts: BuildOptions, progress: Progress | None = None) -> BuildResult:
    progress = progress or Progress(enabled=False)
    p = plan(opts)
    packer = _preflight(opts, p)
    work = tempfile.mkdtemp(prefix="crashcart-build-", dir=opts.work_base)
    try:
        return _build_in(work, opts, p, packer, progress)
    except OSError as e:
        if e.errno == 28:  # ENOSPC
            raise ImageError(f"no space left on device: {e.filename or work}") from None
        raise
    finally:
        if not opts.keep_workdir:
            shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.abspath(opts.output) + ".tmp")  # an interrupted pack


def _preflight(opts: BuildOptions, p: _Plan) -> pack.Packer:
    packer = pack.require(p.fmt)
    if shutil.which("patchelf") is None:
        raise ImageError("patchelf not found", hint="apt-get install patchelf")
    out_dir = os.path.dirname(os.path.abspath(opts.output))
    os.makedirs(out_dir, exist_ok=True)
    _need_space(opts.work_base, MIN_WORK_SPACE)
    _need_space(out_dir, MIN_OUTPUT_SPACE)
    if p.source == "mmdebstrap":
        if shutil.which("mmdebstrap") is None:
            raise ImageError("mmdebstrap not found", hint="apt-get install mmdebstrap")
        assert p.mirror is not None and p.suite is not None
        bootstrap.check_mirror(p.mirror, p.suite)
    if opts.from_rootfs and not os.path.isdir(opts.from_rootfs):
        raise ImageError(f"--from-rootfs {opts.from_rootfs}: not a directory")
    return packer


def _need_space(path: str, need: int) -> None:
    free = shutil.disk_usage(path).free
    if free < need:
        raise ImageError(
            f"not enough space in {path}: {free >> 20} MiB free, about {need >> 20} MiB needed",
            hint="free some space, or build elsewhere with --output / TMPDIR",
        )


def _build_in(
    work: str, opts: BuildOptions, p: _Plan, packer: pack.Packer, progress: Progress
) -> BuildResult:
    rootfs = os.path.join(work, "rootfs")
    with progress.step("install packages" if p.source == "mmdebstrap" else "unpack"):
        _populate(work, rootfs, opts, p, progress)
    packages = bootstrap.installed_packages(rootfs)
    tools = _tools(p, opts, rootfs)
    with progress.step("trim"):
        trim.trim(rootfs)
        trim.empty_mount_points(rootfs)
        problems = layout.install(rootfs, tools)
    with progress.step("relocate"):
        report = relocate.relocate(rootfs, progress=progress.count)
    report.problems[:0] = problems
    build_id = str(uuid.uuid4())
    data = manifest.build_manifest(
        recipe=p.recipe.name,
        source=p.source,
        suite=p.suite,
        mirror=p.mirror,
        fmt=p.fmt,
        compression=packer.compression,
        packages=packages,
        tools=[{"name": t.name, "check": t.argv} for t in tools],
        relocation=report.as_dict(),
        build_id=build_id,
    )
    _write_manifest(rootfs, data)
    output = os.path.abspath(opts.output)
    tmp_out = output + ".tmp"
    with progress.step(f"pack {p.fmt}"):
        pack.pack(p.fmt, rootfs, tmp_out, build_id, _epoch())
    os.replace(tmp_out, output)
    data["build_seconds"] = dict(progress.timings)
    manifest.write_sidecar(output, data)
    kept = rootfs if opts.keep_workdir else None
    return BuildResult(output, os.path.getsize(output), data, dict(progress.timings), kept)


def _populate(work: str, rootfs: str, opts: BuildOptions, p: _Plan, progress: Progress) -> None:
    if opts.from_rootfs:
        os.makedirs(rootfs)
        _copy_tree(opts.from_rootfs, rootfs)
    elif opts.from_image:
        oci.unpack_image(opts.from_image, rootfs, work)
    else:
        assert p.suite is not None and p.mirror is not None
        spec = bootstrap.BootstrapSpec(
            packages=p.recipe.packages,
            target=rootfs,
            suite=p.suite,
            mirror=p.mirror,
            variant=p.recipe.setting("variant", "essential"),
            mode=bootstrap.choose_mode(),
            cache_dir=opts.cache_dir,
        )
        bootstrap.run(spec, os.path.join(work, "mmdebstrap.log"), _mmdebstrap_sink(progress))


def _copy_tree(src: str, dst: str) -> None:
    # cp -a keeps hard links, xattrs (file capabilities) and special files; shutil does not.
    proc = subprocess.run(
        ["cp", "-a", "--reflink=auto", f"{src.rstrip('/')}/.", dst], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise ImageError(f"copying {src} failed: {proc.stderr.strip()[-500:]}")


def _mmdebstrap_sink(progress: Progress) -> bootstrap.LineSink:
    def sink(line: str) -> None:
        if line.startswith("I: "):
            progress.update(line[3:])
        elif line.startswith(("Get:", "Unpacking ", "Setting up ")):
            progress.update(line.split(" (", 1)[0])

    return sink


def _tools(p: _Plan, opts: BuildOptions, rootfs: str) -> list[Tool]:
    """The recipe's probes. For a foreign rootfs, only tools whose program it has; without
    an explicit --recipe their probes become "libraries resolve" checks, since the default
    recipe's probes assume Debian's packaging (perl modules, python stdlib ...)."""
    if p.source == "mmdebstrap":
        return p.recipe.tools
    found = [(t, _program(rootfs, t)) for t in p.recipe.tools]
    if opts.recipe is not None:
        return [t for t, prog in found if prog is not None]
    return list({prog: Tool(prog, []) for _t, prog in found if prog is not None}.values())


def _program(rootfs: str, tool: Tool) -> str | None:
    program = tool.argv[0] if tool.argv and tool.argv[0] not in ("sh", "bash") else tool.name
    if any(rootpath.resolve(rootfs, f"{d}/{program}") for d in layout.TOOLBOX_BIN_DIRS):
        return program
    return None


def _write_manifest(rootfs: str, data: dict[str, Any]) -> None:
    path = os.path.join(rootfs, manifest.MANIFEST_PATH.lstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(manifest.dumps(data))


def _epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
