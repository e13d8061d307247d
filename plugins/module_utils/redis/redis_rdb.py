# -*- coding: utf-8 -*-
# Copyright: Christmas platform operations
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Redis RDB file format, read without a server: checksum, and every key as a RESTORE payload.

An RDB file is ``REDIS`` + four version digits, then opcodes (aux fields, database selection, expiry times, function
libraries) and key/value entries, then ``0xFF`` and a CRC-64/Jones of everything before it. A value is stored exactly as
``DUMP`` serialises it, so a key's RESTORE payload is its type byte and value bytes, followed by the RDB version and a
CRC-64 of both. Entries are parsed from a window of the file: a value that runs past the window makes the window grow
and the entry is parsed again, so memory stays at about the largest single value.
"""

from __future__ import annotations

import os
import struct
import time

from ansible_collections.christmas.recovery.plugins.module_utils.core.errors import RecoveryError
from ansible_collections.christmas.recovery.plugins.module_utils.core.fsutil import CHUNK

# Redis' CRC-64/Jones: anycrc (PyPI, about 10 GB/s) or else crcmod's C extension (Debian's python3-crcmod, about
# 400 MB/s), so that a host with only Debian packages can back up and restore Redis.
try:
    import anycrc
    _CRC64_CALC = anycrc.CRC(width=64, poly=0xAD93D23594C935A9, init=0, refin=True, refout=True, xorout=0).calc
except ImportError:
    try:
        import crcmod
        _CRC64_CALC = crcmod.mkCrcFun(0x1AD93D23594C935A9, initCrc=0, rev=True, xorOut=0)
    except ImportError:  # reported by the modules with missing_required_lib
        _CRC64_CALC = None
HAS_CRC64 = _CRC64_CALC is not None
CRC64_LIBRARIES = "anycrc (pip) or crcmod (Debian's python3-crcmod)"

HEADER = struct.Struct("5s4s")
TRAILER = 9  # 0xFF + CRC-64
OP_FUNCTION, OP_MODULE_AUX, OP_IDLE, OP_FREQ, OP_AUX, OP_RESIZEDB = 0xF5, 0xF7, 0xF8, 0xF9, 0xFA, 0xFB
OP_EXPIRE_MS, OP_EXPIRE_S, OP_SELECTDB, OP_EOF = 0xFC, 0xFD, 0xFE, 0xFF
ONE_STRING_TYPES = frozenset((0, 9, 10, 11, 12, 13, 16, 17, 20))  # string, ziplist/intset/listpack encodings
STRING_LIST_TYPES = frozenset((1, 2, 14))  # list, set, quicklist: count + strings
STREAM_TYPES = frozenset((15, 19, 21))
SET_HASHTABLE, HASH_HASHTABLE = 2, 4  # serialised in hash-table order, which differs between servers
_U32, _U64, _LE64 = struct.Struct(">I"), struct.Struct(">Q"), struct.Struct("<Q")


class _NeedMore(Exception):
    """The entry runs past the window; read more and parse it again."""


def crc64(data, crc=0):
    """Redis' CRC-64/Jones (reflected), as used in DUMP payloads and RDB files."""
    return _CRC64_CALC(data, crc) if data else crc


class Checker:
    """Fed every byte of an RDB file in order, says whether it is complete and intact: an RDB header, the end marker
    and a CRC-64 residue of 0 (data followed by its own CRC-64 checks to 0). A server with ``rdbchecksum no`` stores a
    zero CRC, and then only the structure is checked."""

    def __init__(self):
        if not HAS_CRC64:
            raise RecoveryError("Redis needs a CRC-64 library on this host: %s" % CRC64_LIBRARIES)
        self.crc, self.head, self.tail, self.size = 0, b"", b"", 0

    def add(self, data):
        self.crc = crc64(data, self.crc)
        self.size += len(data)
        if len(self.head) < HEADER.size:
            self.head = (self.head + bytes(data[:HEADER.size]))[:HEADER.size]
        self.tail = (self.tail + bytes(data[-TRAILER:]))[-TRAILER:]

    def version(self, name):
        """The RDB version; raises naming ``name`` when the file is not a complete, intact RDB file."""
        version = header_version(self.head, name)
        if self.size < HEADER.size + TRAILER or self.tail[0] != OP_EOF:
            raise RecoveryError("Redis artifact %s is truncated: it does not end with the RDB end marker" % name)
        if self.tail[1:] != bytes(8) and self.crc:
            raise RecoveryError("Redis artifact %s fails its CRC-64" % name)
        return version


def check_file(path):
    """Deep check of a file: read it once through a Checker; returns the RDB version."""
    checker = Checker()
    with open(path, "rb", buffering=0) as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            checker.add(block)
    return checker.version(os.path.basename(path))


def header_version(header, name):
    if len(header) != HEADER.size:
        raise RecoveryError("Redis artifact %s is truncated (%d bytes)" % (name, len(header)))
    magic, digits = HEADER.unpack(header)
    if magic != b"REDIS" or not digits.isdigit():
        raise RecoveryError("Redis artifact %s is not an RDB file (no REDIS header)" % name)
    return int(digits)


def payload(kind, value, version):
    """A DUMP/RESTORE payload: type byte, value, RDB version and CRC-64."""
    body = bytes((kind,)) + value + struct.pack("<H", version)
    return body + _LE64.pack(crc64(body))


def _parser(buf):
    """Closures over one window ``buf`` that skip RDB lengths, strings and values, returning the next offset."""

    def length(pos):
        first = buf[pos]
        kind = first >> 6
        if kind == 0:
            return first & 0x3F, pos + 1
        if kind == 1:
            return ((first & 0x3F) << 8) | buf[pos + 1], pos + 2
        if first == 0x80:
            return _U32.unpack_from(buf, pos + 1)[0], pos + 5
        if first == 0x81:
            return _U64.unpack_from(buf, pos + 1)[0], pos + 9
        raise RecoveryError("bad length encoding 0x%02x" % first)

    def string(pos):
        first = buf[pos]
        if first >> 6 != 3:
            size, pos = length(pos)
            return pos + size
        encoding = first & 0x3F
        if encoding < 3:  # an integer of 1, 2 or 4 bytes
            return pos + 1 + (1 << encoding)
        if encoding == 3:  # LZF: compressed length, plain length, data
            size, pos = length(pos + 1)
            return length(pos)[1] + size
        raise RecoveryError("bad string encoding 0x%02x" % first)

    return length, string, _value_skipper(buf, length, string)


def _value_skipper(buf, length, string):
    """A closure that skips one value of a given RDB type in ``buf``."""

    def strings(pos, count):
        for _ in range(count):
            pos = string(pos)
        return pos

    def double(pos):
        size = buf[pos]
        return pos + 1 + (0 if size >= 253 else size)

    def module_value(pos):
        _, pos = length(pos)  # module id
        while True:
            opcode, pos = length(pos)
            if opcode == 0:
                return pos
            if opcode in (1, 2):
                pos = length(pos)[1]
            elif opcode == 3:
                pos += 4
            elif opcode == 4:
                pos += 8
            elif opcode == 5:
                pos = string(pos)
            else:
                raise RecoveryError("bad module opcode %d" % opcode)

    def stream(pos, kind):
        count, pos = length(pos)
        pos = strings(pos, 2 * count)  # node keys and listpacks
        for _ in range(3 if kind == 15 else 8):  # length, last id; with v2: first id, max deleted id, entries added
            pos = length(pos)[1]
        groups, pos = length(pos)
        for _ in range(groups):
            pos = string(pos)
            for _ in range(2 if kind == 15 else 3):  # last delivered id, with v2 entries read
                pos = length(pos)[1]
            pending, pos = length(pos)
            for _ in range(pending):
                pos = length(pos + 24)[1]  # id (16), delivery time (8), delivery count
            consumers, pos = length(pos)
            for _ in range(consumers):
                pos = string(pos) + (16 if kind == 21 else 8)  # seen time, with v3 active time
                pending, pos = length(pos)
                pos += 16 * pending
        return pos

    def value(pos, kind):
        if kind in ONE_STRING_TYPES:
            return string(pos)
        if kind in STRING_LIST_TYPES:
            count, pos = length(pos)
            return strings(pos, count)
        if kind == 4:
            count, pos = length(pos)
            return strings(pos, 2 * count)
        if kind in (3, 5):
            count, pos = length(pos)
            for _ in range(count):
                pos = string(pos)
                pos = double(pos) if kind == 3 else pos + 8
            return pos
        if kind == 18:
            count, pos = length(pos)
            for _ in range(count):
                pos = string(length(pos)[1])  # container kind, then its data
            return pos
        if kind in STREAM_TYPES:
            return stream(pos, kind)
        if kind == 7:
            return module_value(pos)
        raise RecoveryError("unsupported RDB value type %d" % kind)

    return value


def _read_string(buf, pos, length):
    """Decode a string at ``pos`` (plain, integer or LZF); returns (bytes, next offset)."""
    first = buf[pos]
    if first >> 6 != 3:
        size, pos = length(pos)
        return bytes(buf[pos:pos + size]), pos + size
    encoding = first & 0x3F
    if encoding < 3:
        size = 1 << encoding
        return str(int.from_bytes(buf[pos + 1:pos + 1 + size], "little", signed=True)).encode(), pos + 1 + size
    packed, pos = length(pos + 1)
    plain, pos = length(pos)
    if pos + packed > len(buf):
        raise _NeedMore
    return lzf_decompress(bytes(buf[pos:pos + packed]), plain), pos + packed


def lzf_decompress(data, size):
    out, pos = bytearray(), 0
    while pos < len(data):
        ctrl = data[pos]
        pos += 1
        if ctrl < 32:  # a literal run
            out += data[pos:pos + ctrl + 1]
            pos += ctrl + 1
            continue
        run = ctrl >> 5
        if run == 7:
            run += data[pos]
            pos += 1
        ref = len(out) - ((ctrl & 0x1F) << 8) - data[pos] - 1
        pos += 1
        if ref < 0:
            raise RecoveryError("bad LZF back reference")
        for _ in range(run + 2):
            out.append(out[ref])
            ref += 1
    if len(out) != size:
        raise RecoveryError("LZF data decompresses to %d bytes, not %d" % (len(out), size))
    return bytes(out)


def members(kind, value):
    """The members of a hash-table set, or the field/value pairs of a hash-table hash, as a sorted list."""
    window = memoryview(value)
    length = _parser(window)[0]
    count, pos = length(0)
    items = []
    for _ in range(count * (2 if kind == HASH_HASHTABLE else 1)):
        item, pos = _read_string(window, pos, length)
        items.append(item)
    if kind == HASH_HASHTABLE:
        items = list(zip(items[::2], items[1::2], strict=True))
    return sorted(items)


class Entry:
    """One key of the file: its database, name, absolute expiry in ms (or None), type and value bytes."""

    __slots__ = ("db", "key", "expire_ms", "kind", "value")

    def __init__(self, db, key, expire_ms, kind, value):
        self.db, self.key, self.expire_ms, self.kind, self.value = db, key, expire_ms, kind, value

    def restore_payload(self, version):
        return payload(self.kind, self.value, version)


def rdb_version(path):
    with open(path, "rb") as handle:
        return header_version(handle.read(HEADER.size), os.path.basename(path))


def read_entries(path):
    """Yield ("key", Entry) and ("function", library code) in file order; raise naming the artifact when the
    structure is broken or truncated, or holds what a key-by-key restore cannot carry (module aux data)."""
    name = os.path.basename(path)
    with open(path, "rb", buffering=0) as handle:
        header_version(handle.read(HEADER.size), name)
        window = _Window(handle)
        db, expire_ms, keys = 0, None, 0
        while True:
            try:
                op, value = window.next_item()
            except RecoveryError as err:
                raise RecoveryError("Redis artifact %s is corrupt after %d keys: %s" % (name, keys, err)) from None
            if op == "key":
                kind, key, body = value
                keys += 1
                yield "key", Entry(db, key, expire_ms, kind, body)
                expire_ms = None
            elif op == OP_EXPIRE_MS:
                expire_ms = value
            elif op == OP_SELECTDB:
                db = value
            elif op == OP_FUNCTION:
                yield "function", value
            elif op == OP_EOF:
                return


class _Window:
    """A sliding window over the file; ``next_item`` parses one opcode or entry from it."""

    def __init__(self, handle):
        self.handle, self.buf, self.pos, self.eof, self.want = handle, b"", 0, False, CHUNK
        self.length, self.string, self.value = _parser(self.buf)

    def _grow(self):
        if self.eof:
            raise RecoveryError("the file ends in the middle of an entry (truncated)")
        block = self.handle.read(max(self.want, CHUNK))
        if not block:
            self.eof = True
        self.buf = self.buf[self.pos:] + block
        self.pos = 0
        self.want = 2 * len(self.buf)
        self.length, self.string, self.value = _parser(self.buf)

    def next_item(self):
        while True:
            try:
                item, end = self._parse(self.pos)
            except (IndexError, struct.error, _NeedMore):
                self._grow()
                continue
            self.pos = end
            self.want = CHUNK
            return item

    def _parse(self, pos):
        buf, length, string = self.buf, self.length, self.string
        if pos >= len(buf):
            raise _NeedMore
        op = buf[pos]
        pos += 1
        if op < OP_FUNCTION:
            key, key_end = _read_string(buf, pos, length)
            end = _checked(self.value(_checked(key_end, buf), op), buf)
            return ("key", (op, key, buf[key_end:end])), end
        if op == OP_EXPIRE_MS:
            return (OP_EXPIRE_MS, _LE64.unpack_from(buf, pos)[0]), pos + 8
        if op == OP_SELECTDB:
            db, pos = length(pos)
            return (OP_SELECTDB, db), pos
        if op == OP_EOF:
            return (OP_EOF, None), pos
        if op == OP_RESIZEDB:
            return (OP_RESIZEDB, None), length(length(pos)[1])[1]
        if op == OP_AUX:
            return (OP_AUX, None), _checked(string(string(pos)), buf)
        if op == OP_EXPIRE_S:
            return (OP_EXPIRE_MS, struct.unpack_from("<I", buf, pos)[0] * 1000), pos + 4
        if op == OP_IDLE:
            return (OP_IDLE, None), length(pos)[1]
        if op == OP_FREQ:
            return (OP_FREQ, None), pos + 1
        if op == OP_FUNCTION:
            code, end = _read_string(buf, pos, length)
            return (OP_FUNCTION, code), _checked(end, buf)
        if op == OP_MODULE_AUX:
            raise RecoveryError("it holds module auxiliary data, which a key-by-key restore cannot carry")
        raise RecoveryError("unknown RDB opcode 0x%02x" % op)


def _checked(end, buf):
    if end > len(buf):
        raise _NeedMore
    return end


def now_ms():
    return int(time.time() * 1000)
