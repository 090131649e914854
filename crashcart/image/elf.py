"""Just enough ELF parsing to plan relocation: interpreter, needed libraries, rpath/runpath.

Reading headers in Python costs microseconds per file; asking `patchelf --print-*` for the
same facts costs a process per question, and a Debian userland has thousands of ELF files.
Only little-endian ELF is handled (x86_64, aarch64 as Debian builds them); anything else is
reported as "not ELF" and left untouched.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field

ELF_MAGIC = b"\x7fELF"
_Buf = bytes | mmap.mmap

# <elf.h>
ET_EXEC = 2
ET_DYN = 3
PT_LOAD = 1
PT_DYNAMIC = 2
PT_INTERP = 3
DT_NULL = 0
DT_NEEDED = 1
DT_STRTAB = 5
DT_SONAME = 14
DT_RPATH = 15
DT_RUNPATH = 29


@dataclass
class ElfInfo:
    """What relocation needs to know about one ELF file."""

    elf_type: int
    interp: str | None = None
    needed: list[str] = field(default_factory=list)
    rpath: str | None = None
    runpath: str | None = None
    soname: str | None = None
    dynamic: bool = False

    @property
    def is_executable(self) -> bool:
        """A program the kernel starts through an interpreter (incl. PIE and libc.so.6)."""
        return self.interp is not None

    @property
    def search_path(self) -> str | None:
        return self.runpath if self.runpath is not None else self.rpath


@dataclass
class _Layout:
    cls64: bool

    @property
    def dyn(self) -> struct.Struct:
        return struct.Struct("<qQ" if self.cls64 else "<iI")


def is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def read_elf(path: str) -> ElfInfo | None:
    """Parse `path`; None when it is not a little-endian ELF file we understand."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < 52 or f.read(4) != ELF_MAGIC:
                return None
            # mmap: the headers and the dynamic string table are a few pages of a
            # multi-megabyte file; reading it all would dominate a relocation pass.
            with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as data:
                return parse_elf(data)
    except (OSError, ValueError):
        return None


def parse_elf(data: bytes | mmap.mmap) -> ElfInfo | None:
    if len(data) < 52 or data[:4] != ELF_MAGIC or data[5] != 1 or data[4] not in (1, 2):
        return None
    lay = _Layout(cls64=data[4] == 2)
    try:
        return _parse(data, lay)
    except (struct.error, IndexError, UnicodeDecodeError):
        return None


def _parse(data: _Buf, lay: _Layout) -> ElfInfo:
    if lay.cls64:
        e_type, e_phoff, e_phentsize, e_phnum = _unpack("<H14xQ14xHH", data, 16)
    else:
        e_type, e_phoff, e_phentsize, e_phnum = _unpack("<H10xI14xHH", data, 16)
    info = ElfInfo(elf_type=e_type)
    loads: list[tuple[int, int, int]] = []
    dynamic: tuple[int, int] | None = None
    for i in range(e_phnum):
        p_type, offset, vaddr, filesz = _phdr(data, lay, e_phoff + i * e_phentsize)
        if p_type == PT_INTERP:
            info.interp = _cstr(data, offset)
        elif p_type == PT_LOAD:
            loads.append((vaddr, offset, filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (offset, filesz)
    if dynamic is not None:
        info.dynamic = True
        _read_dynamic(data, lay, dynamic, loads, info)
    return info


def _phdr(data: _Buf, lay: _Layout, off: int) -> tuple[int, int, int, int]:
    """(p_type, p_offset, p_vaddr, p_filesz) of the program header at `off`."""
    fmt = "<I4xQQ8xQ" if lay.cls64 else "<III4xI"
    p_type, p_offset, p_vaddr, p_filesz = _unpack(fmt, data, off)
    return p_type, p_offset, p_vaddr, p_filesz


def _read_dynamic(
    data: _Buf,
    lay: _Layout,
    dynamic: tuple[int, int],
    loads: list[tuple[int, int, int]],
    info: ElfInfo,
) -> None:
    entries = _dyn_entries(data, lay, *dynamic)
    strtab_vaddr = next((v for tag, v in entries if tag == DT_STRTAB), None)
    if strtab_vaddr is None:
        return
    strtab = _vaddr_to_offset(strtab_vaddr, loads)
    if strtab is None:
        return
    for tag, val in entries:
        if tag == DT_NEEDED:
            info.needed.append(_cstr(data, strtab + val))
        elif tag == DT_RPATH:
            info.rpath = _cstr(data, strtab + val)
        elif tag == DT_RUNPATH:
            info.runpath = _cstr(data, strtab + val)
        elif tag == DT_SONAME:
            info.soname = _cstr(data, strtab + val)


def _dyn_entries(data: _Buf, lay: _Layout, offset: int, size: int) -> list[tuple[int, int]]:
    fmt = lay.dyn
    out: list[tuple[int, int]] = []
    for pos in range(offset, offset + size - fmt.size + 1, fmt.size):
        tag, val = fmt.unpack_from(data, pos)
        if tag == DT_NULL:
            break
        out.append((tag, val))
    return out


def _vaddr_to_offset(vaddr: int, loads: list[tuple[int, int, int]]) -> int | None:
    for seg_vaddr, seg_off, seg_size in loads:
        if seg_vaddr <= vaddr < seg_vaddr + seg_size:
            return vaddr - seg_vaddr + seg_off
    return None


def _unpack(fmt: str, data: _Buf, off: int) -> tuple[int, ...]:
    return struct.unpack_from(fmt, data, off)


def _cstr(data: _Buf, off: int) -> str:
    end = data.find(b"\0", off)
    if end < 0:
        raise IndexError(off)
    return bytes(data[off:end]).decode()
