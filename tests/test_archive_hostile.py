"""Hostile archives, crafted byte by byte: every one is refused as ``ArchiveInvalid`` quickly,
in bounded memory, without revealing paths of this machine and leaving the target as it was;
valid archives from Python's tarfile, GNU tar and ``pack_dir`` still unpack identically."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from support.archives import Unsized, assert_untouched

from profiles import ArchiveInvalid
from profiles.state.archive import ArchiveLimits, pack_dir, unpack_archive

MiB = 1024 * 1024
BLOCK = 512
RECORD = 20 * BLOCK
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
REPO = Path(__file__).resolve().parent.parent
MTIME = 1_700_000_000


# ----------------------------------------------------------------------- tar, by hand


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _base256(value: int, width: int) -> bytes:
    """GNU's binary number field: 0x80 then big-endian, or 0xff and two's complement."""
    if value >= 0:
        return b"\x80" + value.to_bytes(width - 1, "big")
    return b"\xff" + (value % 256 ** (width - 1)).to_bytes(width - 1, "big")


def _header(
    name: bytes,
    *,
    size: int = 0,
    kind: bytes = b"0",
    mtime: int = MTIME,
    size_field: bytes | None = None,
    mtime_field: bytes | None = None,
    prefix: bytes = b"",
    checksum: bytes | None = None,
) -> bytes:
    """One 512-byte ustar header block with a correct checksum (unless one is given)."""
    assert len(name) <= 100 and len(prefix) <= 155
    block = b"".join(
        [
            name.ljust(100, b"\0"),
            _octal(0o755 if kind == b"5" else 0o644, 8),
            _octal(1000, 8),
            _octal(1000, 8),
            size_field if size_field is not None else _octal(size, 12),
            mtime_field if mtime_field is not None else _octal(mtime, 12),
            b" " * 8,
            kind,
            b"\0" * 100,
            b"ustar\x00",
            b"00",
            b"user".ljust(32, b"\0"),
            b"user".ljust(32, b"\0"),
            _octal(0, 8),
            _octal(0, 8),
            prefix.ljust(155, b"\0"),
            b"\0" * 12,
        ]
    )
    assert len(block) == BLOCK
    chk = checksum if checksum is not None else b"%06o\0 " % sum(block)
    return block[:148] + chk + block[156:]


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def _file(name: bytes, data: bytes = b"x", **kw: object) -> bytes:
    return _header(name, size=len(data), **kw) + _pad(data)  # type: ignore[arg-type]


def _dir(name: bytes) -> bytes:
    return _header(name, kind=b"5")


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + len(str(len(body)))
    if len(str(length)) != len(str(len(body))):
        length += 1
    return b"%d" % length + body


def _pax(records: list[tuple[bytes, bytes]], kind: bytes = b"x") -> bytes:
    payload = b"".join(_pax_record(k, v) for k, v in records)
    return _header(b"./PaxHeaders/x", size=len(payload), kind=kind) + _pad(payload)


def _long(name: bytes, kind: bytes = b"L") -> bytes:
    return _header(b"././@LongLink", size=len(name) + 1, kind=kind) + _pad(name + b"\0")


def _end(tar: bytes) -> bytes:
    """The end-of-archive marker and zero padding to a full record, as tar writes them."""
    tar += bytes(2 * BLOCK)
    return tar + bytes(-len(tar) % RECORD)


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _zst(data: bytes, checksum: bool = False) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=checksum).compress(data)


def _zstd_zeros(size: int) -> bytes:
    """A zstd frame of ``size`` zero bytes in RLE blocks: 4 bytes of input per 128 KiB."""
    block = 128 * 1024
    count = size // block
    rle = ((block << 3) | 2).to_bytes(3, "little") + b"\0"
    last = ((block << 3) | 3).to_bytes(3, "little") + b"\0"
    return ZSTD_MAGIC + b"\x00" + bytes([(17 - 10) << 3]) + rle * (count - 1) + last


def _tarfile_archive(count: int, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """An uncompressed tar from Python's tarfile with ``count`` small files."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        for i in range(count):
            data = hashlib.sha256(b"%d" % i).digest() * (1 + i % 40)
            info = tarfile.TarInfo(f"Default/file-{i:03d}")
            info.size = len(data)
            info.mtime = MTIME
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


GOOD = _file(b"Local State", b"{}")


def _damaged_checksum() -> bytes:
    """The issue's case: 56 files, one header checksum in the middle damaged."""
    tar = bytearray(_tarfile_archive(56))
    offset = 0
    for _ in range(22):  # skip 22 members (header + data blocks)
        size = int(tar[offset + 124 : offset + 135], 8)
        offset += BLOCK + -(-size // BLOCK) * BLOCK
    assert tar[offset : offset + 7] == b"Default"
    tar[offset + 150] ^= 0x01  # one bit in the checksum field
    return _gz(bytes(tar))


def _pax_size_smaller(blocks_short: bool) -> bytes:
    data = os.urandom(5000 if blocks_short else 1000)
    small = b"100" if blocks_short else b"600"
    return _gz(
        _end(_pax([(b"size", small)]) + _file(b"Default/History", data) + _file(b"after", b"y"))
    )


def _member_after_single_zero_block() -> bytes:
    return _gz(_end(GOOD + bytes(BLOCK) + _file(b"hidden", b"z")))


# name -> (archive bytes, what the message must say)
HOSTILE: dict[str, tuple[Callable[[], bytes], str]] = {
    # --- headers that would cost memory or recursion
    "pax header too large": (
        lambda: _gz(_end(_header(b"./PaxHeaders/x", size=300 * 1024, kind=b"x"))),
        "header of 307200 bytes",
    ),
    "gnu long name too large": (
        lambda: _gz(_end(_header(b"././@LongLink", size=10 * MiB, kind=b"L"))),
        "header of 10485760 bytes",
    ),
    "chain of long-name headers": (
        lambda: _gz(_end(b"".join(_long(b"n%d" % i) for i in range(5000)) + GOOD)),
        "two GNU long-name headers",
    ),
    "chain of pax headers": (
        lambda: _gz(_end(b"".join(_pax([(b"comment", b"%d" % i)]) for i in range(5000)) + GOOD)),
        "two PAX extended headers",
    ),
    "chain of global headers": (
        lambda: _gz(
            _end(b"".join(_pax([(b"comment", b"%d" % i)], b"g") for i in range(5000)) + GOOD)
        ),
        "in a row",
    ),
    "two pax headers for one member": (
        lambda: _gz(_end(_pax([(b"path", b"a")]) + _pax([(b"path", b"b")]) + GOOD)),
        "two",
    ),
    "global headers accumulate": (
        lambda: _gz(
            _end(
                b"".join(
                    _pax([(b"k%d" % i, b"v" * 100_000)], b"g") + _file(b"f%d" % i)
                    for i in range(20)
                )
            )
        ),
        "global",
    ),
    "malformed pax record": (
        lambda: _gz(
            _end(_header(b"./PaxHeaders/x", size=12, kind=b"x") + _pad(b"99 path=abc\n") + GOOD)
        ),
        "not a complete.*extended header",
    ),
    "extended header without a member": (
        lambda: _gz(_end(GOOD + _pax([(b"path", b"late")]))),
        "not a complete.*extended header",
    ),
    # --- odd names and fields
    "nul in pax path": (
        lambda: _gz(_end(_pax([(b"path", b"Default/a\0b")]) + GOOD)),
        "control character",
    ),
    "newline in name": (lambda: _gz(_end(_file(b"Default/a\nb"))), "control character"),
    "name not utf-8": (lambda: _gz(_end(_file(b"Default/\xff\xfe"))), "UTF-8"),
    "pax path not utf-8": (
        lambda: _gz(_end(_pax([(b"path", b"Default/\xc3\x28")]) + GOOD)),
        "UTF-8",
    ),
    "long name not utf-8": (lambda: _gz(_end(_long(b"Default/\xed\xa0\x80") + GOOD)), "UTF-8"),
    "component over 255 bytes": (
        lambda: _gz(_end(_pax([(b"path", b"Default/" + b"a" * 256)]) + GOOD)),
        "255 bytes",
    ),
    "path past PATH_MAX": (
        lambda: _gz(_end(_long(b"/".join([b"d" * 200] * 25) + b"/f") + GOOD)),
        "too long",
    ),
    "deep path": (
        lambda: _gz(_end(_long(b"a/" * 1500 + b"f") + GOOD)),
        "too deep",
    ),
    "file then directory of the same name": (
        lambda: _gz(_end(_file(b"Default") + _dir(b"Default"))),
        "clashes",
    ),
    "directory then file of the same name": (
        lambda: _gz(_end(_dir(b"Default") + _file(b"Default"))),
        "clashes",
    ),
    "member whose parent is a file": (
        lambda: _gz(_end(_file(b"Default") + _file(b"Default/Cookies"))),
        "clashes",
    ),
    "member whose grandparent is a file": (
        lambda: _gz(_end(_file(b"Default") + _dir(b"Default/a/b"))),
        "clashes",
    ),
    "duplicate file": (
        lambda: _gz(_end(_file(b"Default/Cookies", b"a") + _file(b"Default/Cookies", b"b"))),
        "clashes",
    ),
    "file named like the root": (lambda: _gz(_end(_file(b"./"))), "no name"),
    "file name with a trailing slash": (lambda: _gz(_end(_file(b"Default/x/"))), "slash"),
    "negative size": (
        lambda: _gz(_end(_header(b"Default/x", size_field=_base256(-1, 12)) + GOOD)),
        "size",
    ),
    "huge size": (
        lambda: _gz(_end(_header(b"Default/x", size_field=_base256(2**80, 12)) + GOOD)),
        "per file",
    ),
    "pax size not a number": (
        lambda: _gz(_end(_pax([(b"size", b"-12")]) + _file(b"Default/x"))),
        "size",
    ),
    "huge mtime": (
        lambda: _gz(_end(_file(b"Default/x", mtime_field=_base256(2**80, 12)))),
        "modification time",
    ),
    "pax mtime nan": (
        lambda: _gz(_end(_pax([(b"mtime", b"nan")]) + _file(b"Default/x"))),
        "modification time",
    ),
    "pax mtime 1e999": (
        lambda: _gz(_end(_pax([(b"mtime", b"1e999")]) + _file(b"Default/x"))),
        "modification time",
    ),
    "directory with data": (
        lambda: _gz(_end(_header(b"Default", kind=b"5", size=1024) + bytes(1024))),
        "directory",
    ),
    "gnu sparse member": (
        lambda: _gz(_end(_header(b"Default/sparse", kind=b"S"))),
        "sparse",
    ),
    "pax sparse member": (
        lambda: _gz(_end(_pax([(b"GNU.sparse.major", b"1")]) + _file(b"Default/x"))),
        "sparse",
    ),
    "volume label": (lambda: _gz(_end(_header(b"label", kind=b"V"))), "tar type 'V'"),
    # --- silent data loss: the archive must end with a proper end-of-archive marker
    "damaged header checksum in the middle": (_damaged_checksum, "not a complete.*checksum"),
    "pax size smaller than the data (blocks)": (
        lambda: _pax_size_smaller(True),
        "not a complete",
    ),
    "pax size smaller than the data (padding)": (
        lambda: _pax_size_smaller(False),
        "not a complete.*padding",
    ),
    "no end-of-archive marker": (
        lambda: _gz(GOOD + _file(b"Default/x")),
        "not a complete.*end",
    ),
    "one zero block only": (lambda: _gz(GOOD + bytes(BLOCK)), "not a complete.*end"),
    "member after a single zero block": (_member_after_single_zero_block, "not a complete"),
    "tar cut in a member's data": (
        lambda: _gz((GOOD + _file(b"Default/x", os.urandom(5000)))[:1500]),
        "not a complete",
    ),
    "garbage after the end marker": (
        lambda: _gz(_end(GOOD) + b"surprise" + bytes(100)),
        "not a complete.*after the end",
    ),
    "second tar after the end marker": (
        lambda: _gz(_end(GOOD) + _end(_file(b"Default/more"))),
        "not a complete.*after the end",
    ),
    "gzip member of garbage after the archive": (
        lambda: _gz(_end(GOOD)) + _gz(b"garbage" * 100),
        "not a complete.*after the end",
    ),
    "garbage bytes after the gzip stream": (
        lambda: _gz(_end(GOOD)) + b"garbage!",
        "not a complete",
    ),
    "gzip cut in its trailer": (lambda: _gz(_end(GOOD))[:-4], "not a complete"),
    "gzip with a bad crc": (
        lambda: (lambda b: b[:-8] + bytes([b[-8] ^ 1]) + b[-7:])(_gz(_end(GOOD))),
        "not a complete",
    ),
    "zstd garbage after the frame": (lambda: _zst(_end(GOOD)) + b"garbage!", "not a complete"),
    "zstd frame of garbage after the archive": (
        lambda: _zst(_end(GOOD)) + _zst(b"garbage" * 100),
        "not a complete.*after the end",
    ),
    "zstd cut in its checksum": (lambda: _zst(_end(GOOD), checksum=True)[:-2], "not a complete"),
    "zstd cut before its last block": (
        lambda: _zst(_end(GOOD))[:-3],
        "not a complete",
    ),
    "zstd cut in the data": (
        lambda: _zst(_end(GOOD + _file(b"Default/x", os.urandom(50_000))))[:20_000],
        "not a complete",
    ),
}


def _assert_no_paths(message: str, tmp_path: Path) -> None:
    for secret in {str(tmp_path), str(tmp_path.resolve()), ".unpack-", str(Path.home())}:
        assert secret not in message, message


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused(
    case: str, tmp_path: Path, target_area: tuple[Path, Path]
) -> None:
    make, message = HOSTILE[case]
    area, target = target_area
    upload = tmp_path / "upload.bin"
    upload.write_bytes(make())
    with pytest.raises(ArchiveInvalid, match=message) as err:
        unpack_archive(upload, target, replace=True)
    assert err.value.field == "file" and err.value.status == 400
    _assert_no_paths(err.value.message, tmp_path)
    assert len(err.value.message) < 600
    assert_untouched(area, target)
    # The same bytes from a stream of unknown size are refused the same way.
    with pytest.raises(ArchiveInvalid, match=message):
        unpack_archive(io.BufferedReader(Unsized(upload.read_bytes())), target, replace=True)
    assert_untouched(area, target)


def test_a_long_member_name_is_shown_short_in_the_message(tmp_path: Path) -> None:
    name = b"Default/" + b"\x1b[31m" + b"x" * 5000
    with pytest.raises(ArchiveInvalid) as err:
        unpack_archive(io.BytesIO(_gz(_end(_long(name) + GOOD))), tmp_path / "t")
    assert len(err.value.message) < 400
    assert "\x1b" not in err.value.message and "\\x1b" in err.value.message
    assert not (tmp_path / "t").exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------- bombs: refused in seconds and bounded memory

CHILD = r"""
import json, sys, time
from pathlib import Path
from profiles.errors import ArchiveInvalid
from profiles.state.archive import unpack_archive
start = time.monotonic()
try:
    unpack_archive(Path(sys.argv[1]), Path(sys.argv[2]))
    result = {"error": None, "message": ""}
except ArchiveInvalid as exc:
    result = {"error": "ArchiveInvalid", "message": exc.message}
except BaseException as exc:
    result = {"error": type(exc).__name__, "message": str(exc)[:300]}
result["seconds"] = time.monotonic() - start
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        result["peak_kb"] = int(line.split()[1])
print(json.dumps(result))
"""


def _header_bomb(kind: bytes) -> bytes:
    """A header of ``kind`` announcing 512 MiB, followed by 512 MiB of zeros (a few KB)."""
    head = _header(b"././@LongLink", size=512 * MiB, kind=kind)
    return _zst(head) + _zstd_zeros(512 * MiB) + _zst(_end(GOOD))


def _global_flood() -> bytes:
    """Global headers of 200 KiB each, one per member, every one with a new key."""
    out = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(out, closefd=False) as z:
        for i in range(2000):
            z.write(_pax([(b"k%d" % i, b"v" * 200_000)], b"g") + _file(b"f%d" % i))
        z.write(_end(b""))
    return out.getvalue()


def _long_chain() -> bytes:
    return _gz(_end(b"".join(_long(b"n%d" % i) for i in range(50_000)) + GOOD))


def _gzip_trailer_bomb() -> bytes:
    zeros = gzip.compress(bytes(64 * MiB), compresslevel=9, mtime=0)
    return _gz(_end(GOOD)) + zeros * 200  # 12.5 GiB of zeros after the archive


def _gzip_zero_padding() -> bytes:
    return _gz(_end(GOOD)) + bytes(64 * MiB)


def _gzip_empty_members() -> bytes:
    return _gz(_end(GOOD)) + gzip.compress(b"", mtime=0) * 1_000_000


def _zstd_empty_frames() -> bytes:
    empty = ZSTD_MAGIC + b"\x20\x00" + (1).to_bytes(3, "little")  # FCS 0, one last raw block
    return _zst(_end(GOOD)) + empty * 3_000_000


BOMBS: dict[str, tuple[Callable[[], bytes], str]] = {
    "pax header of 512 MiB": (lambda: _header_bomb(b"x"), "header of"),
    "global pax header of 512 MiB": (lambda: _header_bomb(b"g"), "header of"),
    "gnu long name of 512 MiB": (lambda: _header_bomb(b"L"), "header of"),
    "gnu long link of 512 MiB": (lambda: _header_bomb(b"K"), "header of"),
    "global headers flood": (_global_flood, "global|bomb"),
    "50000 long-name headers": (_long_chain, "two GNU long-name headers"),
    "a terabyte of zeros after the archive (zstd)": (
        lambda: _zst(_end(GOOD)) + _zstd_zeros(1024 * 1024 * MiB),
        "after the end",
    ),
    "gzip members of zeros after the archive": (_gzip_trailer_bomb, "after the end"),
    "64 MiB of zero padding after gzip": (_gzip_zero_padding, "after the gzip"),
    "a million empty gzip members": (_gzip_empty_members, "gzip members"),
    "three million empty zstd frames": (_zstd_empty_frames, "zstd frames"),
    "a member of 1 GiB of zeros": (
        lambda: (
            _zst(_header(b"Default/History", size=1024 * MiB))
            + _zstd_zeros(1024 * MiB)
            + _zst(_end(b""))
        ),
        "bomb",
    ),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", sorted(BOMBS))
def test_bombs_stop_fast_in_bounded_memory(case: str, tmp_path: Path) -> None:
    make, message = BOMBS[case]
    upload = tmp_path / "upload.tar"
    upload.write_bytes(make())
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(upload), str(tmp_path / "area" / "profile")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["error"] == "ArchiveInvalid", result
    assert re.search(message, result["message"]), result
    _assert_no_paths(result["message"], tmp_path)
    assert result["seconds"] < 10, result
    assert result["peak_kb"] < 200 * 1024, result
    assert not (tmp_path / "area" / "profile").exists()
    assert list((tmp_path / "area").iterdir()) == []


# ------------------------------------------------------ valid archives still unpack the same


def _make_tree(root: Path) -> None:
    """A profile-like tree: long and non-ASCII names, empty files and directories, big files."""
    files: dict[str, bytes] = {
        "Local State": b'{"profile": {}}',
        "Default/Cookies": os.urandom(3 * MiB + 17),
        "Default/Preferences": b"{}" * 1000,
        "Default/empty": b"",
        "Default/Local Storage/leveldb/000003.log": os.urandom(700),
        "Default/IndexedDB/" + "i" * 120 + "/" + "j" * 250 + ".ldb": os.urandom(2000),
        "Default/" + "long-" * 30 + "/x": b"long",
        "Default/Local Storage/日本語-ünïcødé ✓.txt": "héllo".encode(),
        "storage/default/https+++ex\u00e4mple.com/" + "ü" * 100 + "/data": b"u" * 513,
        "zeros": bytes(10_000),
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (MTIME + len(rel), MTIME + len(rel)))
    (root / "Default" / "empty dir" / "nested").mkdir(parents=True)


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirs, names in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = ("dir",)
        for name in names:
            path = Path(dirpath) / name
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[os.path.relpath(path, root)] = ("file", digest, int(st.st_mtime))
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree") / "src"
    _make_tree(root)
    return root


def _python_tar(src: Path, out: Path, mode: str, fmt: int, arcname: str) -> None:
    with tarfile.open(str(out), mode, format=fmt) as tar:  # type: ignore[call-overload]
        if arcname == ".":
            tar.add(src, arcname=".")
        else:
            for entry in sorted(src.iterdir()):
                tar.add(entry, arcname=entry.name)


PYTHON_WRITERS = [
    (mode, fmt, arcname)
    for mode in ("w|gz", "w:gz", "w|")
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT)
    for arcname in (".", "")
]


@pytest.mark.parametrize(("mode", "fmt", "arcname"), PYTHON_WRITERS)
def test_python_tarfile_archives_unpack_identically(
    tree: Path, tmp_path: Path, mode: str, fmt: int, arcname: str
) -> None:
    archive = tmp_path / "state.tar.gz"
    if mode == "w|":  # zstd over a plain tar stream
        plain = tmp_path / "state.tar"
        _python_tar(tree, plain, mode, fmt, arcname)
        archive.write_bytes(_zst(plain.read_bytes(), checksum=True))
    else:
        _python_tar(tree, archive, mode, fmt, arcname)
    stats = unpack_archive(archive, tmp_path / "out")
    assert _snapshot(tmp_path / "out") == _snapshot(tree)
    assert stats.files == 10


GNU_TAR = [
    ["czf"],
    ["--format=posix", "-czf"],
    ["--format=gnu", "-czf"],
    ["--format=gnu", "--zstd", "-cf"],
    ["--format=posix", "--zstd", "-cf"],
    ["--format=oldgnu", "-czf"],
    ["--format=gnu", "-b", "64", "-czf"],  # records of 32 KiB: more zero padding at the end
]


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is not installed")
@pytest.mark.parametrize("flags", GNU_TAR, ids=" ".join)
def test_gnu_tar_archives_unpack_identically(tree: Path, tmp_path: Path, flags: list[str]) -> None:
    if "--zstd" in flags and shutil.which("zstd") is None:
        pytest.skip("zstd is not installed")
    archive = tmp_path / "state.tar"
    subprocess.run(["tar", *flags, str(archive), "-C", str(tree), "."], check=True)
    unpack_archive(archive, tmp_path / "out")
    assert _snapshot(tmp_path / "out") == _snapshot(tree)


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_pack_dir_archives_unpack_identically(tree: Path, tmp_path: Path, codec: str) -> None:
    archive = tmp_path / "state"
    with archive.open("wb") as f:
        pack_dir(tree, f, engine="chromium", codec=codec, apply_excludes=False)  # type: ignore[arg-type]
    stats = unpack_archive(archive, tmp_path / "out")
    assert stats.codec == codec
    got, want = _snapshot(tmp_path / "out"), _snapshot(tree)
    assert {k: v for k, v in got.items() if v[0] == "file"} == {
        k: v for k, v in want.items() if v[0] == "file"
    }
    assert set(got) == set(want)


VALID_ODD: dict[str, Callable[[], bytes]] = {
    "empty archive": lambda: _gz(_end(b"")),
    "ustar prefix field": lambda: _gz(
        _end(_header(b"f" * 90, size=2, prefix=b"Default/" + b"p" * 140) + _pad(b"ok"))
    ),
    "global header first (git archive)": lambda: _gz(
        _end(_pax([(b"comment", b"deadbeef")], b"g") + GOOD)
    ),
    "pax size larger than the ustar field allows": lambda: _gz(
        _end(
            _pax([(b"size", b"3")]) + _header(b"Default/x", size_field=_octal(0, 12)) + _pad(b"abc")
        )
    ),
    "base-256 size and mtime": lambda: _gz(
        _end(
            _header(b"Default/x", size_field=_base256(3, 12), mtime_field=_base256(MTIME, 12))
            + _pad(b"abc")
        )
    ),
    "v7 directory (trailing slash, old type)": lambda: _gz(
        _end(_header(b"Default/", kind=b"\0") + _file(b"Default/x"))
    ),
    "directories listed twice and after their files": lambda: _gz(
        _end(_dir(b"Default") + _file(b"Default/a/x") + _dir(b"Default/a") + _dir(b"./Default"))
    ),
    "gzip in two members": lambda: (lambda t: _gz(t[:700]) + _gz(t[700:]))(
        _end(GOOD + _file(b"Default/x"))
    ),
    "gzip with zero padding": lambda: _gz(_end(GOOD)) + bytes(RECORD),
    "zstd in two frames and a skippable frame": lambda: (
        lambda t: (
            _zst(t[:700], True)
            + b"\x50\x2a\x4d\x18"
            + (5).to_bytes(4, "little")
            + b"12345"
            + _zst(t[700:])
        )
    )(_end(GOOD + _file(b"Default/x"))),
    "extra zero records after the end marker": lambda: _zst(_end(GOOD) + bytes(4 * RECORD)),
    "large pax header within the cap": lambda: _gz(
        _end(_pax([(b"comment", b"c" * 200_000)]) + GOOD)
    ),
}


@pytest.mark.parametrize("case", sorted(VALID_ODD))
def test_odd_but_valid_archives_are_accepted(case: str, tmp_path: Path) -> None:
    stats = unpack_archive(io.BytesIO(VALID_ODD[case]()), tmp_path / "out")
    assert stats.files + stats.directories >= 0
    for path in (tmp_path / "out").rglob("*"):
        assert path.is_dir() or path.is_file()


def test_odd_archives_unpack_to_what_they_say(tmp_path: Path) -> None:
    unpack_archive(io.BytesIO(VALID_ODD["ustar prefix field"]()), tmp_path / "a")
    assert (tmp_path / "a" / "Default" / ("p" * 140) / ("f" * 90)).read_bytes() == b"ok"
    unpack_archive(
        io.BytesIO(VALID_ODD["pax size larger than the ustar field allows"]()), tmp_path / "b"
    )
    assert (tmp_path / "b" / "Default" / "x").read_bytes() == b"abc"
    stats = unpack_archive(
        io.BytesIO(VALID_ODD["zstd in two frames and a skippable frame"]()), tmp_path / "c"
    )
    assert (tmp_path / "c" / "Default" / "x").read_bytes() == b"x"
    assert (tmp_path / "c" / "Local State").read_bytes() == b"{}"
    assert stats.files == 2
    unpack_archive(io.BytesIO(VALID_ODD["base-256 size and mtime"]()), tmp_path / "d")
    assert (tmp_path / "d" / "Default" / "x").stat().st_mtime == MTIME
    stats = unpack_archive(
        io.BytesIO(VALID_ODD["v7 directory (trailing slash, old type)"]()), tmp_path / "e"
    )
    assert (stats.files, stats.directories) == (1, 1)


def test_limits_are_fields(tmp_path: Path) -> None:
    tar = _gz(_end(_pax([(b"comment", b"c" * 5000)]) + GOOD))
    with pytest.raises(ArchiveInvalid, match="header of"):
        unpack_archive(io.BytesIO(tar), tmp_path / "a", limits=ArchiveLimits(max_header_bytes=4096))
    unpack_archive(io.BytesIO(tar), tmp_path / "b", limits=ArchiveLimits(max_header_bytes=8192))
    assert (tmp_path / "b" / "Local State").read_bytes() == b"{}"


def _random_tar(rnd: random.Random) -> bytearray:
    raw = io.BytesIO()
    fmt = rnd.choice([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
    names = ["a", "Default/b", "Default/" + "x" * 120 + "/y", "ü/é", "d/d/d/f", "a/b"]
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        for _ in range(rnd.randint(0, 6)):
            info = tarfile.TarInfo(rnd.choice(names))
            info.mtime = rnd.choice([0, MTIME, 2**40])
            if rnd.random() < 0.3:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                data = rnd.randbytes(rnd.choice([0, 1, 511, 512, 513, 3000]))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return bytearray(raw.getvalue())


def _mutate(rnd: random.Random, data: bytearray) -> bytes:
    for _ in range(rnd.randint(1, 4)):
        if not data:
            break
        i, op = rnd.randrange(len(data)), rnd.random()
        if op < 0.5:
            data[i] = rnd.randrange(256)
        elif op < 0.6:
            del data[i : i + rnd.randint(1, 600)]
        elif op < 0.7:
            data[i:i] = rnd.randbytes(rnd.randint(1, 600))
        elif op < 0.8:
            data[i:i] = bytes(rnd.choice([BLOCK, 2 * BLOCK]))
        elif op < 0.9:  # a field of a header: name, size, mtime, checksum, type, prefix
            j = i // BLOCK * BLOCK + rnd.choice([100, 124, 136, 148, 156, 345])
            data[j : j + 4] = rnd.choice([b"\x80\xff\xff\xff", b"7777", b"\xff" * 4, b"L\0\0\0"])
        else:
            del data[i:]
    return bytes(data)


@pytest.mark.parametrize("seed", range(4))
def test_damaged_archives_unpack_whole_or_are_refused(seed: int, tmp_path: Path) -> None:
    """Random damage to valid archives: never an exception but ArchiveInvalid, never a
    half-unpacked target, never anything but files and directories."""
    rnd = random.Random(seed)
    outcomes = {"unpacked": 0, "refused": 0}
    for _ in range(150):
        tar = _mutate(rnd, _random_tar(rnd))
        upload = _gz(tar) if rnd.random() < 0.6 else _zst(tar)
        if rnd.random() < 0.1:
            upload = _mutate(rnd, bytearray(upload))
        target = tmp_path / "area" / "profile"
        try:
            unpack_archive(io.BytesIO(upload), target)
        except ArchiveInvalid as exc:
            outcomes["refused"] += 1
            _assert_no_paths(exc.message, tmp_path)
            assert list((tmp_path / "area").iterdir()) == []
        else:
            outcomes["unpacked"] += 1
            assert all(p.is_file() or p.is_dir() for p in target.rglob("*"))
        shutil.rmtree(tmp_path / "area")
    assert outcomes["refused"] > 100
