"""Does a video file end where its own structure says it ends? (Byte framing, no decoding.)

Every container read_video supports frames its data in nested records that carry their own
lengths (MP4/MOV boxes, Matroska/WebM EBML elements, AVI RIFF chunks) or, for GIF, ends with a
trailer byte (0x3B). Walking the top-level records costs a few small reads, and a file cut
anywhere, even in its last byte, is found, including cuts that FFmpeg decodes without a
complaint (a Matroska file without its trailing index, a GIF without its trailer).

Where the structure cannot tell (a Matroska segment or an AVI written as a live stream has an
"unknown" size, an MP4 box of size 0 runs to the end of the file), the answer is "not shown to
be cut" and read_video relies on the frame count or duration the container declares.
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, NamedTuple

# Top-level ISO BMFF / QuickTime box types that can open a file: anything else is not an MP4.
MP4_FIRST_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp", b"sidx", b"moof",
                   b"uuid", b"junk"}
EBML_MAGIC = b"\x1a\x45\xdf\xa3"
MATROSKA_SEGMENT = b"\x18\x53\x80\x67"
MATROSKA_TOP_LEVEL = (EBML_MAGIC, MATROSKA_SEGMENT, b"\xec", b"\xbf")  # header, segment, Void, CRC-32
GIF_TRAILER = 0x3B


class Truncation(NamedTuple):
    reason: str  # what the structure declares against what the file has
    whole_frames: int | None = None  # frames that arrived complete, where the bytes tell (GIF)


def truncation_in_bytes(path: str | Path) -> Truncation | None:
    """How the file is shorter than its own structure declares, or None (whole, or cannot tell)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(12)
        if head[:6] in (b"GIF87a", b"GIF89a"):
            file.seek(0)
            return _gif_truncation(file.read())
        if head[:4] == EBML_MAGIC:
            walk, kind = _ebml_end, "Matroska/WebM elements"
        elif head[:4] == b"RIFF" and head[8:12] == b"AVI ":
            walk, kind = _riff_end, "AVI (RIFF) chunks"
        elif head[4:8] in MP4_FIRST_BOXES:
            walk, kind = _mp4_end, "MP4/MOV boxes"
        else:
            return None
        end = walk(file, size)
    if end is None or end <= size:
        return None
    return Truncation(f"it has {size} bytes, but its {kind} declare at least {end}")


def _mp4_end(file: BinaryIO, size: int) -> int | None:
    offset, has_index = 0, False
    while offset < size:
        file.seek(offset)
        header = file.read(16)
        if len(header) < 8:
            return offset + 8  # cut inside a box header
        box_size, box_type = int.from_bytes(header[:4], "big"), header[4:8]
        if not all(32 <= c < 127 for c in box_type):
            return None  # not a box: trailing bytes of some other writer, not ours to judge
        if box_size == 1:
            if len(header) < 16:
                return offset + 16
            box_size = int.from_bytes(header[8:16], "big")
        elif box_size == 0:
            return None  # "runs to the end of the file": no length to check
        if box_size < 8:
            return None
        has_index |= box_type in (b"moov", b"moof")
        offset += box_size
    return offset if has_index else offset + 8  # cut before its index (moov): a box is missing


def _riff_end(file: BinaryIO, size: int) -> int | None:
    offset = 0
    while offset < size:
        file.seek(offset)
        header = file.read(8)
        if len(header) < 8:
            return offset + 8
        if header[:4] != b"RIFF":
            return None  # AVI parts are RIFF chunks; anything else is not ours to judge
        chunk_size = int.from_bytes(header[4:8], "little")
        if chunk_size == 0 and offset == 0:
            return None  # written as a stream: the size was never filled in
        offset += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to an even length
    return offset


def _ebml_end(file: BinaryIO, size: int) -> int | None:
    offset, has_segment = 0, False
    while offset < size:
        file.seek(offset)
        header = file.read(12)
        id_length = _vint_length(header[0])
        if not 1 <= id_length <= 4:
            return None  # not an element: damaged, not cut
        if len(header) <= id_length:
            return offset + id_length + 1  # cut inside an element header
        if header[:id_length] not in MATROSKA_TOP_LEVEL:
            return None  # trailing bytes of some other writer, not ours to judge
        size_length = _vint_length(header[id_length])
        if not size_length:
            return None
        if len(header) < id_length + size_length:
            return offset + id_length + size_length
        raw = header[id_length:id_length + size_length]
        value = int.from_bytes(raw, "big") & ((1 << (7 * size_length)) - 1)
        if value == (1 << (7 * size_length)) - 1:
            return None  # "unknown size": a live-written segment has no length to check
        has_segment |= header[:id_length] == MATROSKA_SEGMENT
        offset += id_length + size_length + value
    return offset if has_segment else offset + 1  # cut right after the EBML header


def _vint_length(first_byte: int) -> int:
    """EBML variable-length integers announce their length by the leading zero bits (0: invalid)."""
    for length in range(1, 9):
        if first_byte & (0x80 >> (length - 1)):
            return length
    return 0


def _gif_truncation(data: bytes) -> Truncation | None:
    """Walk the GIF block structure up to its trailer; count the images that arrived whole."""
    size = len(data)
    if size < 13:
        return Truncation(f"it has {size} bytes, fewer than a GIF header", 0)
    position, images = 13, 0
    if data[10] & 0x80:  # global colour table
        position += 3 << ((data[10] & 7) + 1)
    while position < size:
        block = data[position]
        if block == GIF_TRAILER:
            return None
        if block == 0x21:  # extension: label, then data sub-blocks
            position = _skip_sub_blocks(data, position + 2)
        elif block == 0x2C:  # image: descriptor, optional local colour table, LZW size, sub-blocks
            if position + 10 > size:
                break
            packed = data[position + 9]
            position += 10 + ((3 << ((packed & 7) + 1)) if packed & 0x80 else 0)
            position = _skip_sub_blocks(data, position + 1)
            images += position <= size
        else:
            return None  # an unknown block: damaged, not cut; FFmpeg's decoder has the say
    return Truncation(f"it ends after {images} complete image{'s' if images != 1 else ''} "
                      f"without the GIF end marker (byte 0x3B)", images)


def _skip_sub_blocks(data: bytes, position: int) -> int:
    """Position after a chain of length-prefixed sub-blocks (past the end if the data is cut)."""
    size = len(data)
    while position < size:
        length = data[position]
        position += 1 + length
        if length == 0:
            return position
    return size + 1
