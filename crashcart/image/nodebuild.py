"""`crashcart image node`: the node image, crashcart plus the default toolbox as a container
image (crashcart/nodeimage.py says what a node pod must give it).

Three layers, the one that changes most often last so a rebuild after a crashcart change
ships one small layer: a Debian userland with python3 (mmdebstrap, `essential` variant,
trimmed like a toolbox), the toolbox image file at NODE_TOOLBOX, crashcart's package in
python3's dist-packages with its bytecode and the `crashcart` command. ENTRYPOINT crashcart.
Written by crashcart/image/ociwrite.py: one tar that docker load, podman load and ctr images
import all take. SOURCE_DATE_EPOCH fixes what mmdebstrap would otherwise date.
"""

from __future__ import annotations

import contextlib
import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import crashcart
from crashcart import __version__, nodeimage
from crashcart.defaults import DEFAULT_IMAGE
from crashcart.errors import ImageError
from crashcart.image import bootstrap, ociwrite, trim
from crashcart.image.progress import Progress

WORK_BASE = "/var/tmp"
SITE = "usr/lib/python3/dist-packages"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The same start as bin/crashcart (which see): no console-script wrapper, no teardown.
LAUNCHER = b"""#!/usr/bin/python3
import os
import sys

from crashcart.cli import main

code = main()
try:
    sys.stdout.flush()
    sys.stderr.flush()
except OSError:
    code = code or 1
os._exit(code)
"""
# Left out of the Debian layer: the runtime mounts its own /dev, /proc, /sys.
SKIP = ("dev", "proc", "sys")


@dataclass
class NodeOptions:
    output: str
    toolbox: str = DEFAULT_IMAGE
    tag: str | None = None
    suite: str = bootstrap.DEFAULT_SUITE
    mirror: str = bootstrap.DEFAULT_MIRROR
    cache_dir: str | None = bootstrap.CACHE_DIR
    work_base: str = WORK_BASE


def build_node(opts: NodeOptions, progress: Progress | None = None) -> ociwrite.WrittenImage:
    progress = progress or Progress()
    ref = opts.tag or nodeimage.default_node_image()
    ociwrite.check_ref(ref)
    if os.geteuid() != 0:
        # mmdebstrap's unshare mode would leave the files owned by subordinate IDs, and the
        # layer records owners as they are on disk.
        raise ImageError("building the node image needs root", hint="run it with sudo")
    if not os.path.isfile(opts.toolbox):
        hint = "build one with `crashcart image build`, or pass --toolbox"
        raise ImageError(f"no toolbox image at {opts.toolbox}", hint=hint)
    with _workdir(opts.work_base) as work:
        rootfs = os.path.join(work, "rootfs")
        with progress.step("Debian userland with python3 (mmdebstrap)"):
            _bootstrap(opts, rootfs, work, progress)
        with progress.step("layers"):
            layers = [
                _debian_layer(rootfs, work),
                _toolbox_layer(opts.toolbox, work),
                _crashcart_layer(rootfs, work),
            ]
        with progress.step("archive"):
            return ociwrite.write_archive(opts.output, layers, image_config(), ref)


def image_config() -> ociwrite.ImageConfig:
    return ociwrite.ImageConfig(
        entrypoint=["crashcart"],
        env=[PATH_ENV, f"{nodeimage.NODE_ENV}=1"],
        labels={
            "org.opencontainers.image.title": "crashcart node image",
            "org.opencontainers.image.version": __version__,
            "org.crashcart.toolbox": nodeimage.NODE_TOOLBOX,
        },
    )


@contextlib.contextmanager
def _workdir(base: str) -> Iterator[str]:
    os.makedirs(base, exist_ok=True)
    work = tempfile.mkdtemp(prefix="crashcart-node-", dir=base)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bootstrap(opts: NodeOptions, rootfs: str, work: str, progress: Progress) -> None:
    spec = bootstrap.BootstrapSpec(
        packages=["python3"],
        target=rootfs,
        suite=opts.suite,
        mirror=opts.mirror,
        variant="essential",
        mode=bootstrap.choose_mode(),
        cache_dir=opts.cache_dir,
    )
    bootstrap.check_mirror(opts.mirror, opts.suite)
    with _source_date_epoch():
        bootstrap.run(spec, os.path.join(work, "mmdebstrap.log"), _sink(progress))
    trim.trim(rootfs)


@contextlib.contextmanager
def _source_date_epoch() -> Iterator[None]:
    """mmdebstrap (and dpkg's maintainer scripts) date files and /etc/shadow with it."""
    old = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = str(ociwrite.EPOCH)
    try:
        yield
    finally:
        if old is None:
            del os.environ["SOURCE_DATE_EPOCH"]
        else:
            os.environ["SOURCE_DATE_EPOCH"] = old


def _sink(progress: Progress) -> bootstrap.LineSink:
    def sink(line: str) -> None:
        if line.startswith(("I: ", "Get:", "Unpacking ", "Setting up ")):
            progress.update(line.removeprefix("I: ").split(" (", 1)[0])

    return sink


def _debian_layer(rootfs: str, work: str) -> ociwrite.Layer:
    w = ociwrite.LayerWriter(os.path.join(work, "debian.tar"), "mmdebstrap essential + python3")
    w.add_tree(rootfs, skip=SKIP)
    return w.close()


def _toolbox_layer(toolbox: str, work: str) -> ociwrite.Layer:
    w = ociwrite.LayerWriter(os.path.join(work, "toolbox.tar"), f"toolbox {toolbox}")
    w.add_file(toolbox, nodeimage.NODE_TOOLBOX)
    sidecar = toolbox + ".manifest.json"  # crashcart image info, the session's tool list
    if os.path.isfile(sidecar):
        w.add_file(sidecar, nodeimage.NODE_TOOLBOX + ".manifest.json")
    return w.close()


def _crashcart_layer(rootfs: str, work: str) -> ociwrite.Layer:
    """The package as installed (sources, data files) with bytecode compiled by the image's
    own python (unchecked-hash pycs: no mtimes, reproducible). Measured in the node image:
    a session costs 70-90 ms with the bytecode, 180 ms without. Copied into the rootfs after
    the Debian layer was written, so it is in this layer only."""
    src = os.path.dirname(os.path.abspath(crashcart.__file__))
    dest = os.path.join(rootfs, SITE, "crashcart")
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _compile(rootfs, dest)
    w = ociwrite.LayerWriter(os.path.join(work, "crashcart.tar"), f"crashcart {__version__}")
    w.add_tree(dest, prefix=f"{SITE}/crashcart")
    w.add_bytes("usr/bin/crashcart", LAUNCHER, mode=0o755)
    return w.close()


def _compile(rootfs: str, dest: str) -> None:
    """With the image's python in a chroot (root only); else with ours when it is the same
    version; else none (python compiles at each start in the container)."""
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    if os.geteuid() == 0 and os.path.exists(chroot):
        argv = [chroot, rootfs, "/usr/bin/python3", "-m", "compileall", "-q",
                "--invalidation-mode", "unchecked-hash", f"/{SITE}/crashcart"]  # fmt: skip
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}  # not ours: PYTHONPATH ...
        proc = subprocess.run(argv, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)  # fmt: skip
        if proc.returncode != 0:
            raise ImageError(f"compiling crashcart in the image failed: {proc.stderr[-300:]}")
        return
    if _image_python(rootfs) == f"python{sys.version_info[0]}.{sys.version_info[1]}":
        _host_compile(dest)


def _image_python(rootfs: str) -> str:
    try:
        return os.readlink(os.path.join(rootfs, "usr/bin/python3"))
    except OSError as e:
        raise ImageError(f"the node image has no python3: {e.strerror}") from None


def _host_compile(dest: str) -> None:
    for rel in ociwrite.walk_sorted(dest):
        if rel.endswith(".py"):
            py_compile.compile(
                os.path.join(dest, rel),
                dfile=f"/{SITE}/crashcart/{rel}",
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
