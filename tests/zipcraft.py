"""Zip archives built byte by byte, so that a test can make one lie where :mod:`zipfile` never would: a
member whose bytes cover the members after it (the overlapping "zip bomb"), a local header that
disagrees with the central directory, an end record that miscounts.

:func:`build` writes what :func:`numpy.savez` writes (stored members one after another, the central
directory, the end record), with each :class:`Member`'s lies applied.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass, replace

LOCAL = struct.Struct("<4s5H3L2H")
CENTRAL = struct.Struct("<4s6H3L5H2L")
END = struct.Struct("<4s4H2LH")
DATE = 0x21  # 1 January 1980, the earliest date a zip can hold


@dataclass(frozen=True)
class Member:
    """One zip member and what its headers may say falsely about it."""

    name: str
    data: bytes = b""
    flags: int = 0
    covers_the_rest: bool = False  # its data: a uint8 .npy header, then every later member's bytes
    local_name: str | None = None  # the name its local header gives, when not ``name``
    local_size: int | None = None  # the size its local header gives, when not the real one
    offset: int | None = None  # the local header offset its directory entry gives
    size: int | None = None  # the size (stored and uncompressed) its directory entry and local header give


def members_of(path) -> list[Member]:
    """The members of the archive at ``path``, as they are."""
    with zipfile.ZipFile(path) as archive:
        return [Member(info.filename, archive.read(info)) for info in archive.infolist()]


def uint8_npy(count: int) -> bytes:
    """A .npy header (format 1.0) for ``count`` uint8 values, 128 bytes long as NumPy writes it."""
    text = ("{'descr': '|u1', 'fortran_order': False, 'shape': (" + f"{count}," + "), }").ljust(117) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode()


def bomb(count: int) -> list[Member]:
    """``count`` members, each covering every member after it: put them first."""
    return [Member(f"optim/bomb{i}.npy", covers_the_rest=True) for i in range(count)]


def filler(count: int) -> list[Member]:
    """``count`` empty uint8 arrays, each a member of its own."""
    return [Member(f"optim/filler{i}.npy", uint8_npy(0)) for i in range(count)]


def build(members: list[Member], *, count: int | None = None) -> bytes:
    """The archive's bytes; the end record counts ``count`` members (default: all of them)."""
    body, placed = b"", []  # built from the last member back, so a member can cover those after it
    for member in reversed(members):
        head = uint8_npy(len(body)) if member.covers_the_rest else member.data
        data = head + body if member.covers_the_rest else head
        size = len(data) if member.size is None else member.size
        local_name = (member.local_name or member.name).encode()
        local_size = size if member.local_size is None else member.local_size
        crc = zlib.crc32(data)
        local = LOCAL.pack(b"PK\x03\x04", 20, member.flags, 0, 0, DATE, crc, local_size, local_size,
                           len(local_name), 0)  # fmt: skip
        body = local + local_name + head + body
        placed.append((member, len(body), crc, size))
    directory = b""
    for member, from_end, crc, size in reversed(placed):
        offset = len(body) - from_end if member.offset is None else member.offset
        name = member.name.encode()
        directory += CENTRAL.pack(b"PK\x01\x02", 20, 20, member.flags, 0, 0, DATE, crc, size, size,
                                  len(name), 0, 0, 0, 0, 0, offset) + name  # fmt: skip
    count = len(members) if count is None else count
    return body + directory + END.pack(b"PK\x05\x06", 0, 0, count, count, len(directory), len(body), 0)


def rewrite(change, **options):
    """A tamper of a model file: its members rebuilt with ``change(members)`` (a new list) applied."""

    def tamper(path):
        path.write_bytes(build(change(members_of(path)), **options))

    return tamper


def lie(index: int, **fields):
    """A change: member ``index`` says ``fields`` falsely (see :class:`Member`)."""

    def change(members):
        members[index] = replace(members[index], **fields)
        return members

    return change
