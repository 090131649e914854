"""Real toolbox images and throw-away "containers" to run them in.

- ``minimal_image``: `crashcart image build --recipe minimal`, built once per session.
- ``default_image``: the default recipe, built once per session (~45 s with a warm .deb
  cache), or the image named by CRASHCART_TEST_DEFAULT_IMAGE.
- ``rootfs(name)``: a private copy of a testbed rootfs: "busybox" (Debian's static busybox
  and its links, no libc at all) or "musl" (Debian's musl loader, a musl-linked server and a
  static busybox).
- ``sandbox(mode, rootfs, image, script)``: run a bash script with the toolbox attached,
  in new mount, pid and network namespaces (see sandbox.sh); nothing outlives the call.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from crashcart.image import manifest
from crashcart.image.build import BuildOptions, build
from tests.testbed import images

HERE = Path(__file__).resolve().parent
SANDBOX = HERE / "sandbox.sh"
TOOLBOX_BASH = "/dev/crashcart/usr/bin/bash"


def require_builder() -> None:
    if os.geteuid() != 0:
        pytest.skip("building and mounting toolbox images needs root")
    for tool in ("mmdebstrap", "mkfs.erofs", "patchelf", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing (scripts/runtimes install provides it)")


def _build(out: Path, **kw: str) -> Path:
    result = build(BuildOptions(output=str(out), **kw))  # type: ignore[arg-type]
    return Path(result.output)


@pytest.fixture(scope="session")
def minimal_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_builder()
    return _build(tmp_path_factory.mktemp("img") / "minimal.img", recipe="minimal")


@pytest.fixture(scope="session")
def default_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("CRASHCART_TEST_DEFAULT_IMAGE")
    if given:
        return Path(given)
    require_builder()
    return _build(tmp_path_factory.mktemp("img") / "default.img", recipe="default")


@pytest.fixture(scope="session")
def testbed_rootfs() -> dict[str, Path]:
    try:
        built = {n: images.build_image(n, images.default_out_dir()) for n in ("busybox", "musl")}
    except images.ImageBuildError as e:
        pytest.skip(f"testbed images cannot be built: {e}")
    return {name: b.rootfs for name, b in built.items()}


@pytest.fixture(scope="session")
def testbed_tars() -> dict[str, Path]:
    try:
        return {"musl": images.build_image("musl", images.default_out_dir()).tar}
    except images.ImageBuildError as e:
        pytest.skip(f"testbed images cannot be built: {e}")


RootfsFactory = Callable[[str], Path]


@pytest.fixture
def rootfs(testbed_rootfs: dict[str, Path], tmp_path: Path) -> RootfsFactory:
    """A private copy: the sandbox needs /dev, /proc, /tmp in it, and other tests run
    containers from the testbed's directories."""

    def make(name: str) -> Path:
        dest = tmp_path / f"rootfs-{name}"
        subprocess.run(["cp", "-a", f"{testbed_rootfs[name]}/.", str(dest)], check=True)
        for d in ("dev", "proc", "tmp", "etc"):
            (dest / d).mkdir(exist_ok=True)
        (dest / "etc/resolv.conf").write_text("nameserver 192.0.2.53  # target's own\n")
        (dest / "etc/hostname").write_text("testbox\n")
        return dest

    return make


@dataclass
class Ran:
    returncode: int
    out: str

    def check(self) -> str:
        assert self.returncode == 0, self.out
        return self.out


def sandbox(
    mode: str, root: Path, image: Path, script: str, *, shell: str = TOOLBOX_BASH,
    timeout: float = 120,
) -> Ran:  # fmt: skip
    """Run `script` with `shell -c` inside the sandbox; stdout and stderr merged."""
    fstype = manifest.detect_format(str(image))
    cmd = [
        "unshare", "--mount", "--propagation", "private", "--pid", "--net", "--fork",
        str(SANDBOX), mode, str(root), str(image), fstype, shell, "-c", script,
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )
    return Ran(proc.returncode, proc.stdout + proc.stderr)


def loop_devices_for(image: Path) -> str:
    return subprocess.run(
        ["losetup", "-j", str(image)], capture_output=True, text=True
    ).stdout.strip()
