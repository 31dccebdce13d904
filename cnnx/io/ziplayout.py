"""The zip structure of a model file, checked before a byte of any member's data is read.

Python's :mod:`zipfile` believes the central directory: it does not check that members lie inside the
file, that they do not overlap (a few megabytes of data named by a hundred members read back as
gigabytes), or that a member's local header agrees with its directory entry. A cnnx model file is
simple (what :func:`numpy.savez` writes to a regular file: stored members one after another, then the
central directory, then the end record (after a zip64 end record past 2 GiB), no comment), so anything
else is refused:

1. :func:`read_end_record`, before :mod:`zipfile` parses anything: the end record closes the file, its
   member count is within the cap, and the central directory fills the bytes just before it and is no
   larger than its entries need (so the parse itself is small);
2. :func:`check_layout`, on the parsed directory: each member's local header lies inside the file and
   agrees with its entry (name, method, flags, CRC, sizes), each member is stored (its two sizes are
   equal), and the members lie one after another without overlapping each other or the directory, their
   sizes adding up to no more than the file holds and to no more than ``max_bytes``.

Every defect raises CheckpointError with one line; the caller adds the file's name.
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass

from cnnx.errors import CheckpointError

# signature, disk, the directory's disk, entries on this disk, entries, directory size and offset, comment
_END = struct.Struct("<4s4H2LH")
_END_SIGNATURE = b"PK\x05\x06"
# Before the end record of an archive whose directory starts past 2 GiB: the zip64 end record (signature,
# its size, versions, disks, entries here, entries, directory size and offset), then its locator.
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")
_ZIP64_SIGNATURE = b"PK\x06\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # signature, the zip64 record's disk, its offset, disks
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_LOCAL = struct.Struct("<4s5H3L2H")  # signature, version, flags, method, time, date, CRC, sizes, name, extra
_LOCAL_SIGNATURE = b"PK\x03\x04"
_ZIP64_EXTRA = 0x0001
_UTF8_NAME = 0x800  # flag bit 11: the name is UTF-8 (the only flag a cnnx file's members may carry)
ENTRY_BYTES = 512  # the most a central directory entry of a cnnx file takes: 46 bytes, a name, an extra


@dataclass(frozen=True)
class EndRecord:
    """Where the central directory lies, and how many members it says it holds."""

    members: int
    directory_offset: int
    directory_size: int
    file_size: int


def read_end_record(handle, max_members: int) -> EndRecord:
    """The end record of the archive open as ``handle`` (a seekable binary file), checked; a zip64 end
    record (which :mod:`zipfile` writes once the directory starts past 2 GiB) takes its place when one
    stands just before it, as :mod:`zipfile` reads it."""
    size = handle.seek(0, 2)
    if size < _END.size:
        raise CheckpointError("unreadable or truncated archive (shorter than a zip end record)")
    handle.seek(size - _END.size)
    signature, *fields, comment = _END.unpack(handle.read(_END.size))
    if signature != _END_SIGNATURE or comment:
        raise CheckpointError("unreadable or truncated archive (no zip end record at its end)")
    directory_end = size - _END.size  # where the central directory (or the zip64 records) must end
    zip64 = _zip64_end(handle, directory_end)
    if zip64 is not None:
        fields, directory_end = zip64, directory_end - _ZIP64_LOCATOR.size - _ZIP64_END.size
    disk, directory_disk, here, members, directory_size, offset = fields
    if disk or directory_disk or here != members:
        raise CheckpointError("unreadable archive (a zip split over several disks)")
    if members > max_members:
        raise CheckpointError(f"{members:,} arrays, more than the {max_members:,} a cnnx file holds")
    if offset + directory_size != directory_end:
        raise CheckpointError(
            "unreadable or truncated archive (the central directory does not end where the end record begins)"
        )
    if directory_size > members * ENTRY_BYTES:
        raise CheckpointError(
            f"the central directory takes {directory_size:,} bytes, more than its {members:,} entries need"
        )
    return EndRecord(members, offset, directory_size, size)


def _zip64_end(handle, end: int) -> list[int] | None:
    """The fields of the zip64 end record (disk, directory's disk, entries here, entries, directory size
    and offset) when its locator stands just before the end record at ``end``; None when none does."""
    if end < _ZIP64_LOCATOR.size + _ZIP64_END.size:
        return None
    handle.seek(end - _ZIP64_LOCATOR.size)
    signature, disk, record_offset, disks = _ZIP64_LOCATOR.unpack(handle.read(_ZIP64_LOCATOR.size))
    if signature != _ZIP64_LOCATOR_SIGNATURE:
        return None
    expected = end - _ZIP64_LOCATOR.size - _ZIP64_END.size  # zipfile reads it there, whatever it says
    handle.seek(expected)
    record_signature, record_size, _, _, *fields = _ZIP64_END.unpack(handle.read(_ZIP64_END.size))
    if (disk, disks, record_offset, record_signature, record_size) != (0, 1, expected, _ZIP64_SIGNATURE,
                                                                       _ZIP64_END.size - 12):  # fmt: skip
        raise CheckpointError("unreadable archive (a zip64 end record out of place or of another kind)")
    return fields


def check_layout(handle, members: list[zipfile.ZipInfo], end: EndRecord, max_bytes: int) -> None:
    """Check the members :mod:`zipfile` read from the central directory against the file itself."""
    if len(members) != end.members:
        raise CheckpointError(
            f"the central directory holds {len(members):,} entries, its end record says {end.members:,}"
        )
    spans = sorted((info.header_offset, _data_end(handle, info, end), info.filename) for info in members)
    for (_, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:], strict=False):
        if start_b < end_a:
            raise CheckpointError(f"members {name_a} and {name_b} overlap (one file's bytes read twice)")
    total = sum(info.file_size for info in members)  # at most the file's size, now that none overlap
    if total > max_bytes:
        raise CheckpointError(f"the members hold {total:,} bytes, more than a cnnx file's {max_bytes:,}")


def _data_end(handle, info: zipfile.ZipInfo, end: EndRecord) -> int:
    """Where member ``info``'s data ends, after checking its local header against its directory entry."""
    name, start = info.filename, info.header_offset
    if info.compress_size != info.file_size:
        raise CheckpointError(
            f"member {name} is stored, yet its sizes differ ({info.compress_size:,} and {info.file_size:,})"
        )
    if not 0 <= start <= end.directory_offset - _LOCAL.size:
        raise CheckpointError(f"member {name}: its local header at byte {start:,} lies outside the data")
    handle.seek(start)
    signature, _, flags, method, _, _, crc, stored, size, name_length, extra_length = _LOCAL.unpack(
        handle.read(_LOCAL.size)
    )
    if signature != _LOCAL_SIGNATURE:
        raise CheckpointError(f"member {name}: no local header at byte {start:,}")
    data_start = start + _LOCAL.size + name_length + extra_length
    if data_start + info.file_size > end.directory_offset:
        raise CheckpointError(
            f"member {name}: its {info.file_size:,} bytes run into the central directory (truncated?)"
        )
    raw_name, extra = handle.read(name_length), handle.read(extra_length)
    size, stored = _zip64_sizes(name, extra, size, stored)
    encoding = "utf-8" if info.flag_bits & _UTF8_NAME else "cp437"
    found = {"name": raw_name, "method": method, "flags": flags, "CRC": crc, "size": size,
             "stored size": stored}  # fmt: skip
    expected = {"name": info.orig_filename.encode(encoding), "method": info.compress_type,
                "flags": info.flag_bits, "CRC": info.CRC, "size": info.file_size,
                "stored size": info.compress_size}  # fmt: skip
    for what, value in found.items():
        if value != expected[what]:
            raise CheckpointError(
                f"member {name}: its local header and the central directory disagree on its {what}"
            )
    return data_start + info.file_size


def _zip64_sizes(name: str, extra: bytes, size: int, stored: int) -> tuple[int, int]:
    """The local header's sizes, from its zip64 extra field where the header holds 0xFFFFFFFF (as
    :func:`numpy.savez` writes every member)."""
    while len(extra) >= 4:
        kind, length = struct.unpack("<HH", extra[:4])
        body, extra = extra[4 : 4 + length], extra[4 + length :]
        if kind != _ZIP64_EXTRA:
            continue
        fields = [size, stored]
        for i, value in enumerate(fields):
            if value == 0xFFFFFFFF:
                if len(body) < 8:
                    raise CheckpointError(f"member {name}: a zip64 extra field too short for its sizes")
                fields[i], body = int.from_bytes(body[:8], "little"), body[8:]
        return fields[0], fields[1]
    return size, stored
