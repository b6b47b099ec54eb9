"""Get the GRID corpus into the project layout (``<speaker>/video``, ``<speaker>/align``).

Two sources, one result:

* :func:`import_local` copies a local copy (like ``../shared/data/grid``), checking
  every file against the speaker's ``SHA256SUMS``;
* :func:`fetch` downloads the official distribution, Zenodo record 3625687, with
  resumable, checksum-verified downloads.

The Zenodo record holds one video archive per speaker (``s1.zip`` … ``s34.zip``, no
``s21``; members ``s1/<code>.mpg``, MPEG-1), one ``alignments.zip`` for every speaker
(members ``alignments/s1/<code>.align``), ``audio_25k.zip`` and ``jasagrid.pdf``.
Those names are :class:`ArchiveNames` defaults, easy to change. Alignment folders in
``alignments.zip`` are reported to be mislabelled for several speakers (e.g. folder
``s5`` holds s6's files), so each speaker's alignments are matched by the utterance
codes of its videos, not by folder name alone; a remapping is reported in the notes.

The corpus is CC BY 4.0: ``ATTRIBUTION.md`` is written next to the data every time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from tqdm.auto import tqdm

from .corpus import VIDEO_SUFFIXES

ZENODO_RECORD_URL = "https://zenodo.org/api/records/3625687"
ZENODO_DOI = "10.5281/zenodo.3625687"
CITATION = (
    'M. Cooke, J. Barker, S. Cunningham, X. Shao, "An audio-visual corpus for speech '
    'perception and automatic speech recognition", J. Acoust. Soc. Am. 120(5), '
    "2421-2424, 2006."
)
LICENCE = "Creative Commons Attribution 4.0 International (CC BY 4.0)"
LICENCE_URL = "https://creativecommons.org/licenses/by/4.0/"
SUMS_FILE = "SHA256SUMS"
ALIGN_SUFFIX = ".align"
USER_AGENT = "mouthmap-fetch/0.1 (+https://github.com/; GRID corpus download)"
_CHUNK = 1 << 20
_NET_CHUNK = 1 << 16  # bytes of a read cut by a dropped connection are lost: keep it small
_SPEAKER = re.compile(r"^s\d{1,3}$")
_SPEAKER_PART = re.compile(r"^(s\d{1,3})(?!\d)", re.IGNORECASE)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class FetchError(RuntimeError):
    """The corpus could not be downloaded or laid out (the message says which file/URL)."""


class ChecksumError(FetchError):
    """A downloaded archive does not match the checksum the record publishes."""


@dataclass(frozen=True)
class Failure:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class ImportReport:
    dest: Path
    speakers: list[str] = field(default_factory=list)
    copied: int = 0
    skipped: int = 0  # already present with the same content
    unverified: int = 0  # copied, but the speaker's SHA256SUMS does not list them
    bytes_copied: int = 0
    failed: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        s = (
            f"{self.copied} copied ({self.bytes_copied / 1e6:.1f} MB), {self.skipped} already "
            f"present, {len(self.failed)} failed"
        )
        if self.unverified:
            s += f", {self.unverified} not listed in {SUMS_FILE}"
        return s + "".join(f"\n  failed: {f}" for f in self.failed)


@dataclass
class FetchReport:
    dest: Path
    speakers: list[str] = field(default_factory=list)
    downloaded: list[str] = field(default_factory=list)  # archives fetched (now or resumed)
    cached: list[str] = field(default_factory=list)  # archives already verified in the cache
    bytes_downloaded: int = 0
    copied: int = 0  # files written into dest
    skipped: int = 0  # files already in dest with the same size/content
    failed: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        s = (
            f"archives: {len(self.downloaded)} downloaded ({self.bytes_downloaded / 1e6:.1f} MB),"
            f" {len(self.cached)} from cache; files: {self.copied} written, "
            f"{self.skipped} already present, {len(self.failed)} failed"
        )
        s += "".join(f"\n  note: {n}" for n in self.notes)
        return s + "".join(f"\n  failed: {f}" for f in self.failed)


# ----------------------------------------------------------------------------------
# progress bars: none at all when disabled (any tqdm instance starts tqdm's monitor
# thread, and a process that forks workers later is better off without it)
class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc) -> None:
        return None


def _bar(enabled: bool, **kw):
    return tqdm(**kw) if enabled else _NoBar()


def _each(items: list, enabled: bool, **kw):
    return tqdm(items, **kw) if enabled else items


# ----------------------------------------------------------------------------------
# small file helpers
# ----------------------------------------------------------------------------------
def _hash_file(path: Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _tmp_path(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.{os.getpid()}.tmp")


def _write_atomic(dst: Path, stream: IO[bytes], algo: str | None = None) -> tuple[int, str | None]:
    """Copy ``stream`` to ``dst`` through a temp file in the same folder; returns the size
    and (when ``algo``) the digest. The caller may still veto with ``_commit``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(dst)
    h = hashlib.new(algo) if algo else None
    n = 0
    try:
        with open(tmp, "wb") as out:
            while block := stream.read(_CHUNK):
                out.write(block)
                n += len(block)
                if h:
                    h.update(block)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n, h.hexdigest() if h else None


def _commit(dst: Path, mtime_ns: int | None) -> None:
    tmp = _tmp_path(dst)
    if mtime_ns is not None:
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
    os.replace(tmp, dst)


def _discard(dst: Path) -> None:
    _tmp_path(dst).unlink(missing_ok=True)


def _write_text_atomic(dst: Path, text: str) -> None:
    """Write ``text`` unless ``dst`` already holds it (an unchanged file keeps its mtime)."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if dst.read_text(encoding="utf-8") == text:
            return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(dst)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, dst)


def _attribution(source: str, extra: list[str] | None = None) -> str:
    lines = [
        "# Attribution: GRID audio-visual corpus",
        "",
        "The files in this folder come from the GRID corpus:",
        "",
        f"> {CITATION}",
        "",
        f"Licence: {LICENCE}, <{LICENCE_URL}>. Any redistribution of these files, or of",
        "data derived from them, must keep this attribution and state the changes made.",
        "",
        f"Source: {source}",
    ]
    for e in extra or []:
        lines += ["", e]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------
# import from a local copy
# ----------------------------------------------------------------------------------
def read_sha256sums(path: Path) -> dict[str, str]:
    """``sha256  relative/path`` lines (``*`` binary marker allowed) → {path: hex}."""
    sums: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([0-9a-fA-F]{64})\s+\*?(.+)$", line)
        if not m:
            raise ValueError(f"{path}:{n}: not a sha256sum line: {line!r}")
        rel = PurePosixPath(m.group(2).strip())
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"{path}:{n}: unsafe path {str(rel)!r}")
        sums[str(rel)] = m.group(1).lower()
    return sums


def _speaker_dirs(src: Path) -> list[str]:
    return sorted(
        p.name
        for p in src.iterdir()
        if p.is_dir() and ((p / "video").is_dir() or (p / "align").is_dir())
    )


def _copy_one(src: Path, dst: Path, expected: str | None, report: ImportReport, label: str) -> None:
    """Copy ``src`` to ``dst`` unless it is already there; verify against ``expected``."""
    st = src.stat()
    if dst.is_file():
        dstat = dst.stat()
        if dstat.st_size == st.st_size:
            if dstat.st_mtime_ns == st.st_mtime_ns:
                report.skipped += 1
                return
            want = expected or _hash_file(src)
            if _hash_file(dst) == want:
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))  # fast next time
                report.skipped += 1
                return
    with open(src, "rb") as f:
        n, digest = _write_atomic(dst, f, "sha256")
    if expected is not None and digest != expected:
        _discard(dst)
        report.failed.append(
            Failure(
                label,
                f"sha256 {digest} does not match {SUMS_FILE} ({expected}); not copied",
            )
        )
        return
    _commit(dst, st.st_mtime_ns)
    report.copied += 1
    report.bytes_copied += n


def import_local(
    src: Path, dest: Path, speakers: list[str] | None = None, *, progress: bool = True
) -> ImportReport:
    """Copy a local GRID copy laid out as ``<speaker>/{video,align}`` into ``dest``.

    Files are checked against ``<speaker>/SHA256SUMS`` when present: a mismatch is
    reported (naming the file) and that file is not copied; the rest go on. Files
    already in ``dest`` with the same size and mtime are skipped without hashing
    (same size, other mtime: hashed). Writes are atomic. ``ATTRIBUTION.md`` (CC BY
    4.0) and the source README travel with the data.
    """
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise FileNotFoundError(f"corpus copy {src} does not exist")
    available = _speaker_dirs(src)
    wanted = sorted(set(speakers)) if speakers else available
    missing = [s for s in wanted if s not in available]
    if missing:
        raise FileNotFoundError(
            f"speaker(s) {', '.join(missing)} not found in {src} "
            f"(it has: {', '.join(available) or 'none'})"
        )
    report = ImportReport(dest=dest, speakers=wanted)

    jobs: list[tuple[Path, Path, str | None, str]] = []
    for sp in wanted:
        sdir = src / sp
        sums: dict[str, str] = {}
        sums_file = sdir / SUMS_FILE
        if sums_file.is_file():
            try:
                sums = read_sha256sums(sums_file)
            except ValueError as e:
                report.failed.append(Failure(f"{sp}/{SUMS_FILE}", str(e)))
                continue
        present: set[str] = set()
        for sub in ("video", "align"):
            base = sdir / sub
            if not base.is_dir():
                continue
            for p in sorted(base.rglob("*")):
                if not p.is_file() or p.name.startswith("."):
                    continue
                rel = p.relative_to(sdir).as_posix()
                present.add(rel)
                expected = sums.get(rel)
                if sums and expected is None:
                    report.unverified += 1
                jobs.append((p, dest / sp / rel, expected, f"{sp}/{rel}"))
        for rel in sorted(set(sums) - present):
            if rel.split("/", 1)[0] in ("video", "align"):
                report.failed.append(Failure(f"{sp}/{rel}", f"listed in {SUMS_FILE} but missing"))
        if sums_file.is_file():
            jobs.append((sums_file, dest / sp / SUMS_FILE, None, f"{sp}/{SUMS_FILE}"))

    for p, dst, expected, label in _each(jobs, progress, desc=f"import {src.name}", unit="file"):
        try:
            _copy_one(p, dst, expected, report, label)
        except OSError as e:
            _discard(dst)
            report.failed.append(Failure(label, f"{type(e).__name__}: {e}"))

    readme = src / "README.md"
    if readme.is_file():
        fake = ImportReport(dest=dest)
        with contextlib.suppress(OSError):
            _copy_one(readme, dest / "README.md", None, fake, "README.md")
    _write_text_atomic(
        dest / "ATTRIBUTION.md",
        _attribution(
            f"a local copy of the corpus (folder {src.name!r}); see README.md for how that "
            "copy was made.",
        ),
    )
    return report


# ----------------------------------------------------------------------------------
# download from Zenodo
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArchiveNames:
    """Which record files hold a speaker's videos and alignments (first match wins)."""

    video: tuple[str, ...] = ("{speaker}.zip",)
    align: tuple[str, ...] = ("alignments.zip",)


@dataclass(frozen=True)
class RecordFile:
    key: str
    size: int | None
    checksum: str | None  # "md5:<hex>"
    url: str

    @property
    def algo_hex(self) -> tuple[str, str] | None:
        if not self.checksum:
            return None
        algo, _, hexd = self.checksum.partition(":")
        return (algo.lower(), hexd.lower()) if hexd else ("md5", algo.lower())


def _session():
    import requests

    s = requests.Session()
    s.headers["User-Agent"] = USER_AGENT
    return s


def read_record(record_url: str, session=None, timeout: float = 30.0) -> dict[str, RecordFile]:
    """The files a Zenodo record (API JSON) lists, by key."""
    import requests

    session = session or _session()
    try:
        r = session.get(record_url, timeout=(10, timeout), headers={"Accept": "application/json"})
    except requests.RequestException as e:
        raise FetchError(f"cannot reach {record_url}: {e}") from e
    if r.status_code != 200:
        raise FetchError(f"{record_url} answered HTTP {r.status_code} {r.reason}")
    try:
        doc = r.json()
    except ValueError as e:
        raise FetchError(f"{record_url} did not return JSON (is it the API URL?)") from e
    entries = doc.get("files") if isinstance(doc, dict) else None
    if isinstance(entries, dict):  # /files endpoint shape: {"entries": [...] | {key: ...}}
        entries = entries.get("entries", entries)
        if isinstance(entries, dict):
            entries = list(entries.values())
    if not isinstance(entries, list):
        raise FetchError(f"{record_url}: no 'files' list in the record JSON")
    files: dict[str, RecordFile] = {}
    for e in entries:
        key = e.get("key") or e.get("filename")
        links = e.get("links") or {}
        # the API's list gives the bytes as links.self (…/content); the newer "entries"
        # shape has links.content for the bytes and links.self for file metadata
        url = links.get("content") or links.get("download") or links.get("self")
        if not key or not url:
            continue
        size = e.get("size") or e.get("filesize")
        files[key] = RecordFile(key, int(size) if size else None, e.get("checksum"), url)
    return files


def _pick(
    files: dict[str, RecordFile], templates: tuple[str, ...], speaker: str
) -> tuple[str, bool] | None:
    """The first record key a template gives, and whether it is a per-speaker archive."""
    for t in templates:
        key = t.format(speaker=speaker)
        if key in files:
            return key, "{speaker}" in t
    return None


def _verify_cached(f: RecordFile, path: Path) -> bool:
    """True when ``path`` is the archive the record describes (hash memoised in a sidecar)."""
    if not path.is_file():
        return False
    st = path.stat()
    if f.size is not None and st.st_size != f.size:
        return False
    ah = f.algo_hex
    if ah is None:
        return True
    side = path.with_name(path.name + ".verified")
    with contextlib.suppress(OSError, ValueError):
        memo = json.loads(side.read_text())
        if memo == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "checksum": f.checksum}:
            return True
    if _hash_file(path, ah[0]) != ah[1]:
        return False
    _remember_verified(f, path)
    return True


def _remember_verified(f: RecordFile, path: Path) -> None:
    st = path.stat()
    memo = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "checksum": f.checksum}
    _write_text_atomic(path.with_name(path.name + ".verified"), json.dumps(memo))


class _Incomplete(Exception):
    pass


def download_archive(
    f: RecordFile,
    cache_dir: Path,
    *,
    session=None,
    retries: int = 3,
    retry_wait: float = 2.0,
    progress: bool = True,
    timeout: float = 60.0,
) -> tuple[Path, int]:
    """Download ``f`` into ``cache_dir`` resuming ``<key>.part`` with HTTP Range; verify it.

    Returns the archive path and the bytes transferred now. A server that ignores
    Range restarts from zero. A checksum mismatch deletes the file and raises
    :class:`ChecksumError` naming the file and both checksums.
    """
    import requests

    session = session or _session()
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / f.key
    part = cache_dir / (f.key + ".part")
    part_meta = cache_dir / (f.key + ".part.json")
    meta = {"url": f.url, "size": f.size, "checksum": f.checksum}
    with contextlib.suppress(OSError, ValueError):
        if part.exists() and json.loads(part_meta.read_text()) != meta:
            part.unlink()  # a partial download of another version of the file
    _write_text_atomic(part_meta, json.dumps(meta))

    transferred = 0
    failures = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        if f.size is not None and offset > f.size:
            part.unlink()
            offset = 0
        if f.size is not None and offset == f.size and offset > 0:
            break
        # identity encoding: Range offsets must count the bytes we store
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            with session.get(f.url, headers=headers, stream=True, timeout=(10, timeout)) as r:
                if r.status_code == 416 and offset:  # our part is not a prefix it knows
                    part.unlink()
                    continue
                if r.status_code == 429 or r.status_code >= 500:
                    raise _Incomplete(f"{f.url} answered HTTP {r.status_code} {r.reason}")
                if r.status_code not in (200, 206):
                    raise FetchError(f"{f.url} answered HTTP {r.status_code} {r.reason}")
                start = 0
                if r.status_code == 206:
                    m = re.match(r"bytes (\d+)-", r.headers.get("Content-Range", ""))
                    start = int(m.group(1)) if m else -1
                if start != offset:
                    offset = 0  # no (usable) range support: start again from zero
                with (
                    open(part, "ab" if offset else "wb") as out,
                    _bar(
                        progress,
                        total=f.size,
                        initial=offset,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=f.key,
                    ) as bar,
                ):
                    for block in r.iter_content(_NET_CHUNK):
                        out.write(block)
                        transferred += len(block)
                        bar.update(len(block))
            got = part.stat().st_size
            if f.size is not None and got < f.size:
                raise _Incomplete(f"connection closed after {got} of {f.size} bytes")
            break
        except (requests.RequestException, _Incomplete) as e:
            failures += 1
            if failures > retries:
                kept = part.stat().st_size if part.exists() else 0
                if isinstance(e, requests.ConnectionError) and kept == 0 and transferred == 0:
                    raise FetchError(f"cannot reach {f.url} to download {f.key}: {e}") from e
                raise FetchError(
                    f"download of {f.key} from {f.url} failed after {failures} attempt(s): "
                    f"{e}; {kept} bytes are kept in {part} and the next run resumes there"
                ) from e
            time.sleep(retry_wait * 2 ** (failures - 1))

    ah = f.algo_hex
    if ah is not None:
        actual = _hash_file(part, ah[0])
        if actual != ah[1]:
            part.unlink(missing_ok=True)
            part_meta.unlink(missing_ok=True)
            raise ChecksumError(
                f"{f.key}: checksum mismatch: the record says {ah[0]} {ah[1]}, the downloaded "
                f"file has {ah[0]} {actual}; the file was deleted (run again to download it anew)"
            )
    os.replace(part, final)
    part_meta.unlink(missing_ok=True)
    _remember_verified(f, final)  # the next run trusts size+mtime instead of rehashing
    return final, transferred


# -- archives: a common view over zip and tar ----------------------------------------
@dataclass(frozen=True)
class _Member:
    name: str
    size: int
    mtime: float | None
    ref: object  # ZipInfo or TarInfo
    regular: bool


class _Archive:
    def __init__(self, path: Path) -> None:
        self.path = path
        if zipfile.is_zipfile(path):
            self._zip: zipfile.ZipFile | None = zipfile.ZipFile(path)  # noqa: SIM115
            self._tar: tarfile.TarFile | None = None
        elif tarfile.is_tarfile(path):
            self._zip = None
            self._tar = tarfile.open(path)  # noqa: SIM115 - closed by close()
        else:
            raise FetchError(f"{path.name} is neither a zip nor a tar archive")

    def members(self) -> list[_Member]:
        if self._zip is not None:
            out = []
            for i in self._zip.infolist():
                if i.is_dir():
                    continue
                mt = time.mktime((*i.date_time, 0, 0, -1)) if i.date_time[0] >= 1980 else None
                out.append(_Member(i.filename, i.file_size, mt, i, True))
            return out
        assert self._tar is not None
        return [
            _Member(m.name, m.size, float(m.mtime), m, m.isreg())
            for m in self._tar.getmembers()
            if not m.isdir()
        ]

    def open(self, m: _Member) -> IO[bytes]:
        if self._zip is not None:
            return self._zip.open(m.ref)  # type: ignore[arg-type]
        assert self._tar is not None
        f = self._tar.extractfile(m.ref)  # type: ignore[arg-type]
        if f is None:
            raise FetchError(f"{self.path.name}: {m.name} is not a regular file")
        return f

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._tar is not None:
            self._tar.close()


def _member_path(name: str) -> PurePosixPath | None:
    """The member's path when it is safe to use (relative, no ``..``), else None."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts or re.match(r"^[A-Za-z]:", name):
        return None
    return p


def _is_cruft(p: PurePosixPath) -> bool:
    return any(part == "__MACOSX" or part.startswith("._") for part in p.parts)


def _speaker_in(parents: tuple[str, ...]) -> str | None:
    """The last path part that names a speaker (``s1``, ``s1.mpg_vcd`` …), lower-case."""
    for part in reversed(parents):
        m = _SPEAKER_PART.match(part)
        if m:
            return m.group(1).lower()
    return None


@dataclass
class _Planned:
    member: _Member
    archive: _Archive
    target: Path
    label: str


def _plan_members(
    arc: _Archive,
    key: str,
    suffixes: tuple[str, ...],
    own_speaker: str | None,
    report: FetchReport,
) -> dict[str, list[_Member]]:
    """Members with one of ``suffixes``, grouped by the speaker their path names (or
    ``own_speaker`` for a per-speaker archive whose paths name none)."""
    groups: dict[str, list[_Member]] = {}
    for m in arc.members():
        if not m.name.lower().endswith(suffixes):
            continue
        p = _member_path(m.name)
        if p is None or not m.regular or not _SAFE_NAME.match(p.name):
            report.failed.append(
                Failure(f"{key}:{m.name}", "unsafe path or not a regular file; skipped")
            )
            continue
        if _is_cruft(p):
            continue
        sp = _speaker_in(p.parts[:-1]) or own_speaker
        if sp is None:
            continue
        groups.setdefault(sp, []).append(m)
    return groups


def _stem(m: _Member) -> str:
    return PurePosixPath(m.name).stem


def _write_member(arc: _Archive, pl: _Planned, report: FetchReport) -> None:
    m, dst = pl.member, pl.target
    if dst.is_file():
        st = dst.stat()
        if st.st_size == m.size and (
            m.mtime is None or abs(st.st_mtime - m.mtime) < 2 or _zip_crc_matches(m, dst)
        ):
            report.skipped += 1
            return
    with arc.open(m) as f:
        n, _ = _write_atomic(dst, f)
    if n != m.size:
        _discard(dst)
        report.failed.append(Failure(pl.label, f"archive member {m.name} is truncated"))
        return
    _commit(dst, int(m.mtime * 1e9) if m.mtime is not None else None)
    report.copied += 1


def _zip_crc_matches(m: _Member, path: Path) -> bool:
    import zlib

    if not isinstance(m.ref, zipfile.ZipInfo):
        return False
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            crc = zlib.crc32(block, crc)
    return crc == m.ref.CRC


def fetch(
    record_url: str,
    dest: Path,
    speakers: list[str],
    cache_dir: Path,
    *,
    archives: ArchiveNames | None = None,
    retries: int = 3,
    retry_wait: float = 2.0,
    progress: bool = True,
    timeout: float = 60.0,
) -> FetchReport:
    """Download GRID for ``speakers`` from a Zenodo record and lay it out in ``dest``.

    Archives are cached (and resumed) in ``cache_dir``; a verified archive is never
    downloaded again. Raises :class:`FetchError` (unreachable server, speaker not in
    the record, failed download) or :class:`ChecksumError`; per-file problems while
    laying out are in the report's ``failed``.
    """
    names = archives or ArchiveNames()
    dest, cache_dir = Path(dest), Path(cache_dir)
    wanted = sorted({s.strip().lower() for s in speakers})
    if not wanted:
        raise FetchError("no speakers asked for")
    bad = [s for s in wanted if not _SPEAKER.match(s)]
    if bad:
        raise FetchError(f"not GRID speaker names: {', '.join(bad)} (expected s1 … s34)")

    session = _session()
    files = read_record(record_url, session)
    plan: dict[str, tuple[tuple[str, bool], tuple[str, bool]]] = {}
    for sp in wanted:
        video = _pick(files, names.video, sp)
        if video is None:
            have = sorted(
                {k for t in names.video for k in files if _matches_template(k, t)},
                key=_natural,
            )
            raise FetchError(
                f"speaker {sp} is not in the record {record_url}: no "
                f"{' or '.join(t.format(speaker=sp) for t in names.video)}; it has video "
                f"archives {', '.join(have) or 'none'}"
            )
        align = _pick(files, names.align, sp)
        if align is None:
            raise FetchError(
                f"the record {record_url} has no alignment archive "
                f"({' or '.join(t.format(speaker=sp) for t in names.align)}) for {sp}"
            )
        plan[sp] = (video, align)

    report = FetchReport(dest=dest, speakers=wanted)
    paths: dict[str, Path] = {}
    for key in sorted({k for pair in plan.values() for k, _ in pair}, key=_natural):
        f = files[key]
        if _verify_cached(f, cache_dir / key):
            report.cached.append(key)
            paths[key] = cache_dir / key
            continue
        path, n = download_archive(
            f,
            cache_dir,
            session=session,
            retries=retries,
            retry_wait=retry_wait,
            progress=progress,
            timeout=timeout,
        )
        report.downloaded.append(key)
        report.bytes_downloaded += n
        paths[key] = path

    opened: dict[str, _Archive] = {}
    try:
        for key, path in paths.items():
            opened[key] = _Archive(path)
        grouped: dict[tuple, dict[str, list[_Member]]] = {}

        def groups(key: str, own: str | None, suffixes: tuple[str, ...]):
            if (key, own, suffixes) not in grouped:
                grouped[key, own, suffixes] = _plan_members(opened[key], key, suffixes, own, report)
            return grouped[key, own, suffixes]

        jobs: list[_Planned] = []
        for sp in wanted:
            (vkey, v_own), (akey, a_own) = plan[sp]
            videos = groups(vkey, sp if v_own else None, VIDEO_SUFFIXES).get(sp, [])
            if not videos:
                report.failed.append(Failure(vkey, f"no videos of {sp} in the archive"))
            for m in videos:
                jobs.append(
                    _Planned(
                        m,
                        opened[vkey],
                        dest / sp / "video" / PurePosixPath(m.name).name,
                        f"{sp}/video/{PurePosixPath(m.name).name}",
                    )
                )
            agroups = groups(akey, sp if a_own else None, (ALIGN_SUFFIX,))
            folder = _choose_align_folder(sp, {_stem(m) for m in videos}, agroups, akey, report)
            for m in agroups.get(folder, []) if folder else []:
                jobs.append(
                    _Planned(
                        m,
                        opened[akey],
                        dest / sp / "align" / PurePosixPath(m.name).name,
                        f"{sp}/align/{PurePosixPath(m.name).name}",
                    )
                )
        for pl in _each(jobs, progress, desc="lay out", unit="file"):
            try:
                _write_member(pl.archive, pl, report)
            except (OSError, zipfile.BadZipFile, tarfile.TarError) as e:
                _discard(pl.target)
                report.failed.append(Failure(pl.label, f"{type(e).__name__}: {e}"))
    finally:
        for arc in opened.values():
            arc.close()

    _write_text_atomic(
        dest / "ATTRIBUTION.md",
        _attribution(
            f"Zenodo record {record_url} (DOI {ZENODO_DOI}), archives "
            f"{', '.join(sorted(paths, key=_natural))}; files unchanged (original MPEG-1 "
            "videos and word alignments), only laid out as <speaker>/video and "
            "<speaker>/align.",
            [f"Note: {n}" for n in report.notes],
        ),
    )
    return report


def _choose_align_folder(
    sp: str,
    codes: set[str],
    groups: dict[str, list[_Member]],
    key: str,
    report: FetchReport,
) -> str | None:
    """The alignment group holding ``sp``'s utterances: its own folder unless another
    folder matches its video codes far better (mislabelled folders in the archive)."""

    def overlap(g: str) -> int:
        return len(codes & {_stem(m) for m in groups.get(g, [])})

    if not codes:
        return sp if sp in groups else None
    best = max(groups, key=overlap, default=None)
    own = overlap(sp) if sp in groups else 0
    if best is not None and best != sp and overlap(best) > max(own, len(codes) // 2):
        report.notes.append(
            f"alignments for {sp} were taken from folder {best!r} of {key}: it matches "
            f"{overlap(best)} of {len(codes)} video codes, folder {sp!r} matches {own}"
        )
        return best
    if sp not in groups:
        report.failed.append(Failure(key, f"no alignments for {sp} in the archive"))
        return None
    missing = len(codes) - own
    if missing:
        report.notes.append(f"{missing} of {len(codes)} videos of {sp} have no alignment in {key}")
    return sp


def _matches_template(key: str, template: str) -> bool:
    pattern = re.escape(template).replace(re.escape("{speaker}"), r"s\d{1,3}")
    return re.fullmatch(pattern, key) is not None


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


__all__ = [
    "ArchiveNames",
    "ChecksumError",
    "Failure",
    "FetchError",
    "FetchReport",
    "ImportReport",
    "RecordFile",
    "ZENODO_RECORD_URL",
    "download_archive",
    "fetch",
    "import_local",
    "read_record",
    "read_sha256sums",
]
