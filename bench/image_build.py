"""Benchmark (not a test) of the toolbox image builder, default recipe.

Measures, on this machine:
  - cold build: an empty .deb cache (a fresh directory), everything downloaded
  - warm rebuild: the same cache again
  - size and pack time per format (erofs lz4hc, squashfs zstd, ext4) of the same rootfs
  - cold start of gdb, python3 and tcpdump from each image and from the same relocated
    files on the host's disk, page cache dropped (echo 3 > /proc/sys/vm/drop_caches)
    before every run. Programs run from <busybox rootfs>/dev/crashcart through chroot, in
    a private mount namespace, the way `docker exec CTR /dev/crashcart/...` runs them.

Run as root:  python -m bench.image_build [--runs 3] [--out bench/results]
Prints a table and writes bench/results/image_build-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from crashcart.image import pack
from crashcart.image.build import BuildOptions, build

PROGRAMS = {
    "gdb": ["/dev/crashcart/usr/bin/gdb", "--version"],
    "python3": ["/dev/crashcart/usr/bin/python3", "-c", "import ssl, json"],
    "tcpdump": ["/dev/crashcart/usr/bin/tcpdump", "--version"],
}
FSTYPES = {"erofs": "erofs", "squashfs": "squashfs", "ext4": "ext4"}


def _build(out: Path, cache: Path, keep: bool = False) -> dict[str, Any]:
    start = time.monotonic()
    result = build(BuildOptions(recipe="default", output=str(out), cache_dir=str(cache),
                                keep_workdir=keep))  # fmt: skip
    return {
        "seconds": round(time.monotonic() - start, 1),
        "steps": result.timings,
        "size_bytes": result.size,
        "packages": len(result.manifest["packages"]),
        "tools": len(result.manifest["tools"]),
        "rootfs": result.rootfs,
    }


def _pack_all(rootfs: str, outdir: Path) -> dict[str, dict[str, Any]]:
    sizes: dict[str, dict[str, Any]] = {}
    for fmt in pack.FORMATS:
        out = outdir / f"default.{fmt}"
        start = time.monotonic()
        pack.pack(fmt, rootfs, str(out), "11111111-2222-4333-8444-555555555555", 0)
        sizes[fmt] = {"pack_seconds": round(time.monotonic() - start, 1),
                      "size_bytes": out.stat().st_size, "path": str(out)}  # fmt: skip
    return sizes


def _busybox_root(base: Path) -> Path:
    root = base / "target"
    for d in ("bin", "dev/crashcart", "proc", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    (root / "bin/sh").symlink_to("busybox")
    return root


def _cold_start(source: str, kind: str, root: Path, runs: int) -> dict[str, float]:
    """Runs in a child `unshare -m` so the mount dies with it."""
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-m",
         "bench.image_build", "_coldstart", source, kind, str(root), str(runs)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"cold start of {kind} failed: {proc.stderr.strip()[-800:]}")
    result: dict[str, float] = json.loads(proc.stdout)
    return result


def _coldstart_child(source: str, kind: str, root: str, runs: int) -> None:
    mnt = f"{root}/dev/crashcart"
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", f"{root}/dev"], check=True)
    os.mkdir(mnt)
    for n in ("null", "zero", "urandom"):
        open(f"{root}/dev/{n}", "w").close()
        subprocess.run(["mount", "--bind", f"/dev/{n}", f"{root}/dev/{n}"], check=True)
    if kind == "disk":
        subprocess.run(["mount", "--bind", source, mnt], check=True)
    elif kind == "erofs":
        subprocess.run(["mount", "-t", "erofs", "-o", "ro", source, mnt], check=True)
    else:
        subprocess.run(["mount", "-t", kind, "-o", "ro,loop", source, mnt], check=True)
    out: dict[str, float] = {}
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    for name, argv in PROGRAMS.items():
        samples = []
        for _ in range(runs):
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            start = time.perf_counter()
            subprocess.run([chroot, root, *argv], check=True, capture_output=True,
                           env={"PATH": "/bin"})  # fmt: skip
            samples.append(time.perf_counter() - start)
        out[name] = round(statistics.median(samples), 3)
    print(json.dumps(out))


def _table(data: dict[str, Any]) -> str:
    lines = [
        f"load average before/after: {data['loadavg_before'][0]:.1f} / "
        f"{data['loadavg_after'][0]:.1f} (2 cores)",
        f"default recipe: {data['cold']['packages']} packages, {data['cold']['tools']} tools",
        f"cold build (empty .deb cache): {data['cold']['seconds']:6.1f} s  {data['cold']['steps']}",
        f"warm rebuild:                  {data['warm']['seconds']:6.1f} s  {data['warm']['steps']}",
        "",
        f"{'format':10} {'size MiB':>9} {'pack s':>7} " + " ".join(
            f"{p + ' cold s':>15}" for p in PROGRAMS),
    ]  # fmt: skip
    for kind in [*pack.FORMATS, "disk"]:
        row = data["formats"].get(kind, {})
        size = f"{row['size_bytes'] / 2**20:9.1f}" if "size_bytes" in row else f"{'-':>9}"
        secs = f"{row['pack_seconds']:7.1f}" if "pack_seconds" in row else f"{'-':>7}"
        cold = " ".join(f"{data['cold_start'][kind][p]:15.3f}" for p in PROGRAMS)
        lines.append(f"{kind:10} {size} {secs} {cold}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv and argv[0] == "_coldstart":
        _coldstart_child(argv[1], argv[2], argv[3], int(argv[4]))
        return 0
    parser = argparse.ArgumentParser(prog="bench.image_build")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.image_build: needs root", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="crashcart-bench-", dir="/var/tmp") as tmp:
        base = Path(tmp)
        cache = base / "debs"
        cache.mkdir()
        data: dict[str, Any] = {
            "when": datetime.datetime.now(datetime.UTC).isoformat(),
            "loadavg_before": os.getloadavg(),  # other work on the 2 cores skews the times
        }
        data["cold"] = _build(base / "cold.img", cache)
        data["warm"] = _build(base / "warm.img", cache, keep=True)
        rootfs = data["warm"].pop("rootfs")
        data["cold"].pop("rootfs")
        data["formats"] = _pack_all(rootfs, base)
        root = _busybox_root(base)
        data["cold_start"] = {
            fmt: _cold_start(info["path"], fmt, root, args.runs)
            for fmt, info in data["formats"].items()
        }
        data["cold_start"]["disk"] = _cold_start(rootfs, "disk", root, args.runs)
        shutil.rmtree(os.path.dirname(rootfs), ignore_errors=True)
    data["loadavg_after"] = os.getloadavg()
    for info in data["formats"].values():
        info.pop("path")
    sys.stdout.write(_table(data))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"image_build-{stamp}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
