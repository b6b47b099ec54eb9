"""Getting GRID into the project layout: from a fake Zenodo on loopback, or a local copy."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

from mouthmap.data import fetch as fetch_mod
from mouthmap.data.corpus import discover
from mouthmap.data.fetch import ArchiveNames, ChecksumError, FetchError, fetch, import_local

ROOT = Path(__file__).resolve().parents[1]
CODES = ("bbaf2n", "lgaz8p", "pric5a")
RECORD = "/api/records/3625687"


# ---------------------------------------------------------------------- real clips
@pytest.fixture(scope="module")
def clip_dir() -> Path:
    """A speaker folder with real GRID clips (the committed sample, else the shared copy)."""
    for d in (ROOT / "data" / "sample" / "s1", ROOT.parent / "shared" / "data" / "grid" / "s1"):
        if all((d / "video" / f"{c}.mp4").is_file() for c in CODES):
            return d
    pytest.skip("no GRID clips in data/sample/s1 or ../shared/data/grid/s1")


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(2019, 1, 20, 12, 0, 0)), data)
    return buf.getvalue()


def _videos(clip_dir: Path) -> dict[str, bytes]:
    return {c: (clip_dir / "video" / f"{c}.mp4").read_bytes() for c in CODES}


def _aligns(clip_dir: Path) -> dict[str, bytes]:
    return {c: (clip_dir / "align" / f"{c}.align").read_bytes() for c in CODES}


def zenodo_archives(clip_dir: Path, align_folder: str = "s1") -> dict[str, bytes]:
    """``s1.zip`` (``s1/<code>.mpg``) and ``alignments.zip`` (``alignments/<sN>/<code>.align``)
    shaped like the Zenodo record; the clips' bytes stand in for the MPEG-1 files."""
    videos = {f"s1/{c}.mpg": data for c, data in _videos(clip_dir).items()}
    aligns = {f"alignments/{align_folder}/{c}.align": d for c, d in _aligns(clip_dir).items()}
    aligns["alignments/s2/sgwp1s.align"] = b"0 23750 sil\r\n"  # another speaker's
    if align_folder != "s1":  # a mislabelled s1 folder holding someone else's files
        aligns["alignments/s1/lrwz9a.align"] = b"0 23750 sil\r\n"
    return {"s1.zip": _zip(videos), "alignments.zip": _zip(aligns)}


# ---------------------------------------------------------------------- fake Zenodo
@dataclass
class FakeZenodo:
    """Serves a record JSON and its files; can drop a download once and ignore Range."""

    archives: dict[str, bytes] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)  # override "md5:..."
    drop_once: dict[str, int] = field(default_factory=dict)  # key -> bytes sent, then cut
    ignore_range: bool = False
    file_base: str = ""  # where links.self points (default: this server)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    url: str = ""

    @property
    def record_url(self) -> str:
        return self.url + RECORD

    def record(self) -> dict:
        base = self.file_base or self.url
        return {
            "id": 3625687,
            "files": [
                {
                    "key": key,
                    "size": len(data),
                    "checksum": self.checksums.get(key, "md5:" + hashlib.md5(data).hexdigest()),
                    "links": {"self": f"{base}{RECORD}/files/{key}/content"},
                }
                for key, data in self.archives.items()
            ],
        }

    def gets(self, key: str) -> list[str | None]:
        """The Range header of each GET of archive ``key``."""
        return [r for p, r in self.requests if p == f"{RECORD}/files/{key}/content"]


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        z: FakeZenodo = self.server.zen  # type: ignore[attr-defined]
        path, rng = urlparse(self.path).path, self.headers.get("Range")
        z.requests.append((path, rng))
        if path == RECORD:
            body = json.dumps(z.record()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        m = re.fullmatch(re.escape(RECORD) + r"/files/([^/]+)/content", path)
        if not m or m.group(1) not in z.archives:
            self.send_error(404)
            return
        key = m.group(1)
        data = z.archives[key]
        start = 0
        if rng and not z.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        cut = z.drop_once.pop(key, None)
        if cut is not None:  # send a part, then hang up (HTTP/1.0: the socket closes)
            self.wfile.write(data[start : start + cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data[start:])


@pytest.fixture
def zenodo() -> Iterator[FakeZenodo]:
    zen = FakeZenodo()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.zen = zen  # type: ignore[attr-defined]
    zen.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    thread.start()
    try:
        yield zen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _fetch(zen: FakeZenodo, tmp_path: Path, **kw):
    kw.setdefault("retry_wait", 0)
    kw.setdefault("progress", False)
    kw.setdefault("timeout", 20)
    return fetch(zen.record_url, tmp_path / "grid", ["s1"], tmp_path / "cache", **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- fetch
def test_fetch_lays_out_the_project_corpus_and_a_rerun_downloads_nothing(
    zenodo, tmp_path, clip_dir
):
    zenodo.archives = zenodo_archives(clip_dir)
    report = _fetch(zenodo, tmp_path)
    assert report.ok, report.summary()
    assert report.downloaded == ["alignments.zip", "s1.zip"] and report.cached == []
    assert report.bytes_downloaded == sum(len(a) for a in zenodo.archives.values())
    assert report.copied == 2 * len(CODES)

    dest = tmp_path / "grid"
    clips = discover(dest)
    assert [c.id for c in clips] == [f"s1_{c}" for c in sorted(CODES)]
    assert all(c.align is not None for c in clips)  # the other speaker's file stays out
    videos, aligns = _videos(clip_dir), _aligns(clip_dir)
    for c in clips:
        code = c.video.stem
        assert c.video.read_bytes() == videos[code] and c.align.read_bytes() == aligns[code]
    attribution = (dest / "ATTRIBUTION.md").read_text()
    assert "Cooke" in attribution and "CC BY 4.0" in attribution and "2421-2424" in attribution

    zenodo.requests.clear()
    again = _fetch(zenodo, tmp_path)
    assert again.ok and again.downloaded == [] and again.bytes_downloaded == 0
    assert sorted(again.cached) == ["alignments.zip", "s1.zip"]
    assert again.copied == 0 and again.skipped == 2 * len(CODES)
    assert [p for p, _ in zenodo.requests] == [RECORD]  # only the record was asked for


def test_an_interrupted_download_resumes_with_a_range_request(zenodo, tmp_path, clip_dir):
    zenodo.archives = zenodo_archives(clip_dir)
    size = len(zenodo.archives["s1.zip"])
    zenodo.drop_once["s1.zip"] = size // 3
    report = _fetch(zenodo, tmp_path, retries=2)
    assert report.ok, report.summary()
    first, second = zenodo.gets("s1.zip")  # a read cut mid-way may lose its last block
    assert first is None and 0 < int(re.fullmatch(r"bytes=(\d+)-", second)[1]) <= size // 3
    assert report.bytes_downloaded == sum(len(a) for a in zenodo.archives.values())
    cached = (tmp_path / "cache" / "s1.zip").read_bytes()
    assert cached == zenodo.archives["s1.zip"]
    assert len(discover(tmp_path / "grid")) == len(CODES)


def test_a_download_cut_in_one_run_is_resumed_by_the_next(zenodo, tmp_path, clip_dir):
    zenodo.archives = zenodo_archives(clip_dir)
    cut = len(zenodo.archives["s1.zip"]) // 2
    zenodo.drop_once["s1.zip"] = cut
    with pytest.raises(FetchError, match=r"s1\.zip.*resumes"):
        _fetch(zenodo, tmp_path, retries=0)
    kept = (tmp_path / "cache" / "s1.zip.part").stat().st_size
    assert 0 < kept <= cut
    report = _fetch(zenodo, tmp_path, retries=0)
    assert report.ok
    assert zenodo.gets("s1.zip")[-1] == f"bytes={kept}-"
    assert (tmp_path / "cache" / "s1.zip").read_bytes() == zenodo.archives["s1.zip"]
    assert not (tmp_path / "cache" / "s1.zip.part").exists()


def test_a_server_without_range_support_restarts_the_download(zenodo, tmp_path, clip_dir):
    zenodo.archives = zenodo_archives(clip_dir)
    zenodo.ignore_range = True
    zenodo.drop_once["s1.zip"] = 100_000
    report = _fetch(zenodo, tmp_path, retries=2)
    assert report.ok
    first, second = zenodo.gets("s1.zip")
    assert first is None and second.startswith("bytes=")  # asked for a range, got it all
    assert (tmp_path / "cache" / "s1.zip").read_bytes() == zenodo.archives["s1.zip"]


def test_an_archive_with_the_wrong_checksum_is_refused_and_deleted(zenodo, tmp_path, clip_dir):
    zenodo.archives = zenodo_archives(clip_dir)
    zenodo.checksums["s1.zip"] = "md5:" + "0" * 32
    actual = hashlib.md5(zenodo.archives["s1.zip"]).hexdigest()
    with pytest.raises(ChecksumError) as err:
        _fetch(zenodo, tmp_path)
    msg = str(err.value)
    assert "s1.zip" in msg and "0" * 32 in msg and actual in msg
    assert not (tmp_path / "cache" / "s1.zip").exists()
    assert not (tmp_path / "cache" / "s1.zip.part").exists()
    assert not (tmp_path / "grid" / "s1").exists()


def test_an_unreachable_server_is_named_in_the_error(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}{RECORD}"
    with pytest.raises(FetchError, match=re.escape(url)):
        fetch(url, tmp_path / "grid", ["s1"], tmp_path / "cache", progress=False)


def test_an_unreachable_download_link_is_named_in_the_error(zenodo, tmp_path, clip_dir):
    zenodo.archives = zenodo_archives(clip_dir)
    zenodo.file_base = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(FetchError, match=re.escape(zenodo.file_base)):
        _fetch(zenodo, tmp_path, retries=1)


def test_a_speaker_missing_from_the_record_is_reported(zenodo, tmp_path, clip_dir):
    zenodo.archives = zenodo_archives(clip_dir)
    with pytest.raises(FetchError, match=r"s21.*s1\.zip"):
        fetch(zenodo.record_url, tmp_path / "g", ["s21"], tmp_path / "c", progress=False)
    with pytest.raises(FetchError, match="not GRID speaker"):
        fetch(zenodo.record_url, tmp_path / "g", ["bob"], tmp_path / "c", progress=False)


def test_alignments_in_a_mislabelled_folder_are_matched_by_utterance(zenodo, tmp_path, clip_dir):
    zenodo.archives = zenodo_archives(clip_dir, align_folder="s5")
    report = _fetch(zenodo, tmp_path)
    assert report.ok, report.summary()
    assert any("'s5'" in n and "s1" in n for n in report.notes), report.notes
    aligns = sorted(p.stem for p in (tmp_path / "grid" / "s1" / "align").iterdir())
    assert aligns == sorted(CODES)
    assert "s5" in (tmp_path / "grid" / "ATTRIBUTION.md").read_text()


def test_archive_members_escaping_the_destination_are_not_written(zenodo, tmp_path, clip_dir):
    archives = zenodo_archives(clip_dir)
    evil = {
        **{f"s1/{c}.mpg": d for c, d in _videos(clip_dir).items()},
        "../evil.mpg": b"x",
        "s1/../../evil2.mpg": b"x",
        "/tmp/evil3.mpg": b"x",
    }
    archives["s1.zip"] = _zip(evil)
    zenodo.archives = archives
    report = _fetch(zenodo, tmp_path)
    bad = sorted(f.path for f in report.failed)
    assert bad == ["s1.zip:../evil.mpg", "s1.zip:/tmp/evil3.mpg", "s1.zip:s1/../../evil2.mpg"]
    assert len(discover(tmp_path / "grid")) == len(CODES)
    written = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert not {"evil.mpg", "evil2.mpg", "evil3.mpg"} & written
    assert not Path("/tmp/evil3.mpg").exists()


def test_a_per_speaker_tar_without_speaker_folders_is_laid_out(zenodo, tmp_path, clip_dir):
    """Archive names are configuration: a Sheffield-style ``s1.tar`` with ``video/*.mpg``
    and ``align/*.align`` (no speaker in the paths) lands in the same layout."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for sub, ext, files in (("video", ".mpg", _videos), ("align", ".align", _aligns)):
            for code, data in files(clip_dir).items():
                info = tarfile.TarInfo(f"{sub}/{code}{ext}")
                info.size, info.mtime = len(data), 1_579_500_000
                tar.addfile(info, io.BytesIO(data))
    zenodo.archives = {"s1.tar": buf.getvalue()}
    names = ArchiveNames(video=("{speaker}.tar",), align=("{speaker}.tar",))
    report = _fetch(zenodo, tmp_path, archives=names)
    assert report.ok, report.summary()
    assert report.downloaded == ["s1.tar"]
    clips = discover(tmp_path / "grid")
    assert len(clips) == len(CODES) and all(c.align for c in clips)


# ---------------------------------------------------------------------- import_local
def _local_copy(clip_dir: Path, root: Path) -> Path:
    """A corpus copy of three clips with a SHA256SUMS and a README, like ../shared."""
    sp = root / "s1"
    lines = []
    for code in CODES:
        for sub, ext in (("video", ".mp4"), ("align", ".align")):
            (sp / sub).mkdir(parents=True, exist_ok=True)
            dst = sp / sub / f"{code}{ext}"
            shutil.copy(clip_dir / sub / f"{code}{ext}", dst)
            lines.append(f"{hashlib.sha256(dst.read_bytes()).hexdigest()}  {sub}/{dst.name}")
    (sp / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    (root / "README.md").write_text("# GRID copy\nCC BY 4.0, Cooke et al. 2006\n")
    return root


def test_import_local_copies_verifies_and_a_rerun_touches_nothing(tmp_path, clip_dir, monkeypatch):
    src = _local_copy(clip_dir, tmp_path / "src")
    dest = tmp_path / "grid"
    report = import_local(src, dest, None, progress=False)
    assert report.ok, report.summary()
    assert report.copied == 2 * len(CODES) + 1 and report.unverified == 0  # + SHA256SUMS
    assert [c.id for c in discover(dest)] == [f"s1_{c}" for c in sorted(CODES)]
    for p in (src / "s1").rglob("*"):
        if p.is_file():
            assert (dest / "s1" / p.relative_to(src / "s1")).read_bytes() == p.read_bytes()
    assert "CC BY 4.0" in (dest / "ATTRIBUTION.md").read_text()
    assert (dest / "README.md").read_text() == (src / "README.md").read_text()

    # the second run compares size and mtime only: no hashing, no writing
    calls = []
    real_hash = fetch_mod._hash_file
    monkeypatch.setattr(fetch_mod, "_hash_file", lambda *a: calls.append(a) or real_hash(*a))
    mtimes = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    again = import_local(src, dest, ["s1"], progress=False)
    assert again.ok and again.copied == 0 and again.skipped == 2 * len(CODES) + 1
    assert calls == []
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_import_local_names_a_corrupted_file_and_skips_only_that_one(tmp_path, clip_dir):
    src = _local_copy(clip_dir, tmp_path / "src")
    bad = src / "s1" / "video" / "lgaz8p.mp4"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    dest = tmp_path / "grid"
    report = import_local(src, dest, ["s1"], progress=False)
    assert [f.path for f in report.failed] == ["s1/video/lgaz8p.mp4"]
    assert "sha256" in report.failed[0].reason and "SHA256SUMS" in report.failed[0].reason
    assert "s1/video/lgaz8p.mp4" in report.summary()
    assert not (dest / "s1" / "video" / "lgaz8p.mp4").exists()
    assert report.copied == 2 * len(CODES) - 1 + 1
    assert not list(dest.rglob("*.tmp"))
    # still refused on the next run; the good files are not copied again
    again = import_local(src, dest, ["s1"], progress=False)
    assert [f.path for f in again.failed] == ["s1/video/lgaz8p.mp4"] and again.copied == 0


def test_import_local_replaces_a_damaged_destination_file(tmp_path, clip_dir):
    src = _local_copy(clip_dir, tmp_path / "src")
    dest = tmp_path / "grid"
    import_local(src, dest, ["s1"], progress=False)
    target = dest / "s1" / "align" / "bbaf2n.align"
    target.write_bytes(b"x" * target.stat().st_size)  # same size, new mtime, wrong bytes
    report = import_local(src, dest, ["s1"], progress=False)
    assert report.copied == 1
    assert target.read_bytes() == (src / "s1" / "align" / "bbaf2n.align").read_bytes()


def test_import_local_rejects_an_unknown_speaker(tmp_path, clip_dir):
    src = _local_copy(clip_dir, tmp_path / "src")
    with pytest.raises(FileNotFoundError, match=r"s9.*has: s1"):
        import_local(src, tmp_path / "grid", ["s9"], progress=False)


def test_import_local_of_the_shared_corpus_verifies_every_file(tmp_path, shared_grid):
    report = import_local(shared_grid, tmp_path / "grid", ["s1"], progress=False)
    assert report.ok, report.summary()
    assert report.unverified == 0
    assert len(discover(tmp_path / "grid")) == len(list((shared_grid / "s1" / "video").iterdir()))
