"""`invoke download` against a real HTTP server on loopback: the transfer (toolkit.data.fetch: resume,
checksum, Drive pages), the safe unpacking (toolkit.data.unpack) and the whole step (toolkit.data.download)."""
from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from tests.archive_server import ArchiveServer
from tests.drip_server import DripServer
from tests.test_tasks import invoke
from toolkit.data import fetch as fetch_module
from toolkit.data.download import DownloadError, download
from toolkit.data.fetch import drive_file_id, resolve_url
from toolkit.data.unpack import MARKER_NAME, ArchiveTooBig, UnpackLimits, UnsafeArchive, safe_unpack

FAST = (2.0, 5.0)


def competition_files(root: str = "comp", payload: int = 64, identities: int = 3) -> dict[str, bytes]:
    """A small competition layout under one wrapping folder *root* (names matter, bytes do not)."""
    files = {}
    for identity in range(identities):
        for index in range(2):
            files[f"{root}/training/person{identity}/{index}.jpg"] = os.urandom(payload)
    for index in range(2):
        files[f"{root}/test/query/q{index}.jpg"] = os.urandom(payload)
    for index in range(3):
        files[f"{root}/test/gallery/g{index}.jpg"] = os.urandom(payload)
    return files


def make_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
        for name, data in files.items():
            bundle.writestr(zipfile.ZipInfo(name), data)   # ZipInfo keeps '../' and '/abs' as given
    return buffer.getvalue()


def make_tar(files: dict[str, bytes], links: tuple[tuple[str, str, bytes], ...] = (), mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as bundle:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
        for name, target, kind in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            bundle.addfile(info)
    return buffer.getvalue()


@pytest.fixture()
def server():
    with ArchiveServer() as running:
        yield running


@pytest.fixture()
def data_root(tmp_path) -> Path:
    return tmp_path / "data"


def fetch(url, data_root, **options):
    return download(url, data_root=data_root, timeout=FAST, show_progress=False, **options)


def test_plain_download_unpacks_finds_the_wrapped_layout_and_the_second_call_does_nothing(server, data_root):
    archive = make_zip(competition_files())
    server.files["/files/comp.zip"] = archive
    result = fetch(server.url("/files/comp.zip"), data_root)
    assert result.folder == data_root / "comp" and not result.already
    assert result.competition is not None and result.competition.root == data_root / "comp" / "comp"
    assert result.competition.summary()["identities"] == 3 and len(result.competition.gallery) == 3
    assert "3 identities, 6 training images, 2 queries, 3 gallery images" in result.summary()
    assert result.archive.read_bytes() == archive and result.sha256 == hashlib.sha256(archive).hexdigest()
    assert (result.folder / MARKER_NAME).is_file()
    assert sorted(path.name for path in data_root.iterdir()) == ["comp", "comp.zip"]   # no .part, no state

    requests_before = len(server.requests)
    again = fetch(server.url("/files/comp.zip"), data_root, sha256=result.sha256)
    assert again.already and again.competition is not None
    assert len(server.requests) == requests_before          # nothing asked of the server


def test_a_cut_connection_is_resumed_with_a_range_request(server, data_root):
    archive = make_zip(competition_files(payload=40_000))      # ~0.6 MB
    server.files["/comp.zip"] = archive
    server.cut_after = 150_000
    with pytest.raises(DownloadError, match="connection broke.*run the same command again"):
        fetch(server.url("/comp.zip"), data_root)
    part = data_root / "comp.part"
    assert part.stat().st_size == 150_000 and not (data_root / "comp").exists()

    result = fetch(server.url("/comp.zip"), data_root)
    assert server.range_requests() == ["bytes=150000-"]
    assert result.resumed_from == 150_000 and result.downloaded_bytes == len(archive) - 150_000
    assert result.archive.read_bytes() == archive and not part.exists()
    assert result.competition is not None


def test_a_server_that_ignores_ranges_makes_a_fresh_start(server, data_root):
    archive = make_zip(competition_files(payload=20_000))
    server.files["/comp.zip"] = archive
    server.ranges = False
    server.cut_after = 100_000
    with pytest.raises(DownloadError):
        fetch(server.url("/comp.zip"), data_root)
    result = fetch(server.url("/comp.zip"), data_root)
    assert result.resumed_from == 0 and result.downloaded_bytes == len(archive)
    assert result.archive.read_bytes() == archive


def test_checksum_mismatch_is_an_error_and_the_file_is_not_kept_as_good(server, data_root):
    archive = make_zip(competition_files())
    server.files["/comp.zip"] = archive
    with pytest.raises(DownloadError, match="checksum mismatch") as caught:
        fetch(server.url("/comp.zip"), data_root, sha256="0" * 64)
    assert "\n" not in str(caught.value)
    assert not (data_root / "comp").exists() and not (data_root / "comp.zip").exists()
    assert (data_root / "comp.part.bad").read_bytes() == archive
    good = fetch(server.url("/comp.zip"), data_root, sha256=hashlib.sha256(archive).hexdigest().upper())
    assert good.competition is not None


@pytest.mark.parametrize("evil_name", ["comp/../../evil.txt", "..\\evil.txt", "ABSOLUTE"])
def test_a_zip_that_escapes_its_folder_is_refused_and_nothing_is_written(server, data_root, tmp_path, evil_name):
    outside = tmp_path / "outside" / "evil.txt"
    name = str(outside) if evil_name == "ABSOLUTE" else evil_name
    server.files["/comp.zip"] = make_zip({**competition_files(), name: b"owned"})
    with pytest.raises(UnsafeArchive, match="refused"):
        fetch(server.url("/comp.zip"), data_root)
    assert not outside.exists() and not (tmp_path / "evil.txt").exists() and not (data_root.parent / "evil.txt").exists()
    assert not (data_root / "comp").exists()
    assert not list(data_root.glob(".comp.unpacking-*"))
    assert not list(tmp_path.rglob("evil.txt"))


def test_a_tar_with_links_unpacks_without_creating_or_following_them(server, data_root, tmp_path):
    links = (("comp/training/person0/link.jpg", "/etc/passwd", tarfile.SYMTYPE),
             ("comp/escape", "../../..", tarfile.SYMTYPE),
             ("comp/test/gallery/hard.jpg", "/etc/passwd", tarfile.LNKTYPE))
    server.files["/comp.tar.gz"] = make_tar(competition_files(), links)
    result = fetch(server.url("/comp.tar.gz"), data_root)
    assert result.archive.name == "comp.tar.gz"
    assert len(result.skipped) == 3 and all("not created" in line for line in result.skipped)
    root = data_root / "comp" / "comp"
    for name in ("training/person0/link.jpg", "escape", "test/gallery/hard.jpg"):
        assert not os.path.lexists(root / name)
    assert result.competition is not None and len(result.competition.gallery) == 3


def test_a_tar_that_escapes_its_folder_is_refused(server, data_root, tmp_path):
    server.files["/comp.tar"] = make_tar({**competition_files(), "../../evil.txt": b"owned"}, mode="w")
    with pytest.raises(UnsafeArchive):
        fetch(server.url("/comp.tar"), data_root)
    assert not list(tmp_path.rglob("evil.txt")) and not (data_root / "comp").exists()


@pytest.mark.parametrize("style", ["form", "link"])
def test_google_drive_share_link_follows_the_confirm_page(server, data_root, monkeypatch, style):
    archive = make_zip(competition_files(root="faces-2026"))
    server.drive_files["1AbCdEfGhIjKlMnOp"] = ("faces-2026.zip", archive)
    server.drive_style = style
    monkeypatch.setattr(fetch_module, "DRIVE_DOWNLOAD_ENDPOINT", server.url("/uc"))
    result = fetch("https://drive.google.com/file/d/1AbCdEfGhIjKlMnOp/view?usp=sharing", data_root)
    assert result.folder == data_root / "faces-2026"        # named by the server's Content-Disposition
    assert result.archive.read_bytes() == archive and result.competition is not None
    paths = [path for path, _ in server.requests]
    assert paths[0] == "/uc?export=download&id=1AbCdEfGhIjKlMnOp"
    assert ("uuid=" in paths[-1]) if style == "form" else ("confirm=Xy12" in paths[-1])
    again = fetch("https://drive.google.com/open?id=1AbCdEfGhIjKlMnOp", data_root, to=data_root / "faces-2026")
    assert again.already


def test_a_cut_google_drive_download_resumes_through_the_confirm_page(server, data_root, monkeypatch):
    archive = make_zip(competition_files(root="faces", payload=30_000))
    server.drive_files["1AbCdEfGhIjKlMnOp"] = ("faces.zip", archive)
    server.cut_after = 120_000
    monkeypatch.setattr(fetch_module, "DRIVE_DOWNLOAD_ENDPOINT", server.url("/uc"))
    share_link = "https://drive.google.com/file/d/1AbCdEfGhIjKlMnOp/view"
    with pytest.raises(DownloadError, match="connection broke"):
        fetch(share_link, data_root)
    assert (data_root / "faces.part").stat().st_size == 120_000
    result = fetch(share_link, data_root)
    assert server.range_requests()[-1] == "bytes=120000-" and result.resumed_from == 120_000
    assert result.archive.read_bytes() == archive and result.competition is not None


@pytest.mark.parametrize("url", [
    "https://drive.google.com/file/d/1AbCdEfGhIjKlMnOp/view?usp=sharing",
    "https://drive.google.com/file/d/1AbCdEfGhIjKlMnOp/edit",
    "https://drive.google.com/open?id=1AbCdEfGhIjKlMnOp",
    "https://drive.google.com/uc?id=1AbCdEfGhIjKlMnOp&export=download",
    "https://drive.usercontent.google.com/download?id=1AbCdEfGhIjKlMnOp&export=download",
])
def test_drive_links_in_every_form_give_the_file_id(url):
    assert drive_file_id(url) == "1AbCdEfGhIjKlMnOp"
    assert resolve_url(url).url == "https://drive.google.com/uc?export=download&id=1AbCdEfGhIjKlMnOp"


def test_drive_folders_and_non_http_urls_are_refused_clearly():
    with pytest.raises(DownloadError, match="folder cannot be downloaded"):
        resolve_url("https://drive.google.com/drive/folders/1AbCdEfGhIjKlMnOp")
    with pytest.raises(DownloadError, match="not an http"):
        resolve_url("ftp://host/comp.zip")
    assert drive_file_id("https://example.org/comp.zip") is None


def test_a_web_page_instead_of_an_archive_is_an_error(server, data_root):
    server.files["/comp.zip"] = b"<!DOCTYPE html><html><body>Please log in</body></html>"
    with pytest.raises(DownloadError, match="not an archive: a web page"):
        fetch(server.url("/comp.zip"), data_root)
    assert (data_root / "comp.part.bad").exists() and not (data_root / "comp").exists()


def test_http_errors_and_refused_connections_are_one_line(server, data_root):
    with pytest.raises(DownloadError, match="HTTP 404.*check the link"):
        fetch(server.url("/missing.zip"), data_root)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match="connection refused") as caught:
        fetch(f"http://127.0.0.1:{port}/comp.zip", data_root)
    assert "\n" not in str(caught.value)


def test_a_layout_problem_is_a_warning_and_the_data_is_kept(server, data_root):
    files = {name: data for name, data in competition_files().items() if "/test/" not in name}
    server.files["/partial.zip"] = make_zip(files)
    result = fetch(server.url("/partial.zip"), data_root)
    assert result.competition is None and "test/" in result.layout_problem
    assert (data_root / "partial" / "comp" / "training" / "person0" / "0.jpg").is_file()


def test_a_folder_not_made_by_download_is_not_overwritten(server, data_root):
    server.files["/comp.zip"] = make_zip(competition_files())
    (data_root / "comp").mkdir(parents=True)
    (data_root / "comp" / "mine.txt").write_text("keep me")
    with pytest.raises(DownloadError, match="not made by `invoke download`"):
        fetch(server.url("/comp.zip"), data_root)
    assert (data_root / "comp" / "mine.txt").read_text() == "keep me"


def test_safe_unpack_leaves_no_half_folder_when_the_archive_is_damaged(tmp_path):
    archive = tmp_path / "comp.tar.gz"
    archive.write_bytes(make_tar(competition_files(payload=50_000))[:40_000])   # truncated mid-stream
    with pytest.raises(DownloadError, match="cannot unpack"):
        safe_unpack(archive, tmp_path / "comp")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["comp.tar.gz"]


def test_invoke_download_from_the_command_line(server, tmp_path):
    server.files["/comp.tar.gz"] = make_tar(competition_files())
    first = invoke("download", server.url("/comp.tar.gz"), "--to", str(tmp_path / "data" / "x"), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "3 identities" in first.stdout and (tmp_path / "data" / "x" / MARKER_NAME).is_file()
    second = invoke("download", server.url("/comp.tar.gz"), "--to", str(tmp_path / "data" / "x"), cwd=tmp_path)
    assert second.returncode == 0 and "already downloaded" in second.stdout
    missing = invoke("download", server.url("/nope.zip"), cwd=tmp_path)
    assert missing.returncode == 1 and "error:" in missing.stdout and "404" in missing.stdout
    assert "Traceback" not in missing.stdout + missing.stderr


def test_invoke_download_takes_unpacking_limits(server, tmp_path):
    server.files["/comp.zip"] = make_zip(competition_files(payload=2_000))
    small = invoke("download", server.url("/comp.zip"), "--limits", "size=5KB", cwd=tmp_path)
    assert small.returncode == 1 and "--limits size=" in small.stdout
    assert "Traceback" not in small.stdout + small.stderr and not (tmp_path / "data" / "comp").exists()
    roomy = invoke("download", server.url("/comp.zip"), "--limits", "size=1MiB,files=100", cwd=tmp_path)
    assert roomy.returncode == 0, roomy.stdout + roomy.stderr
    assert (tmp_path / "data" / "comp" / MARKER_NAME).is_file()


# --- a deadline on every transfer: a stall limit and a total limit -----------------------------------


@pytest.mark.parametrize("head", [b"HTTP/1.1 200 OK\r\nX-Slow: ", DripServer.headers(10**9)], ids=["headers", "body"])
def test_a_server_that_drips_forever_is_given_up_on_when_it_stalls(data_root, head):
    with DripServer(head, drip=b"a", every=0.1) as server:
        started = time.monotonic()
        with pytest.raises(DownloadError, match=r"stalled: less than 64.0 KB in 1 s") as caught:
            download(server.url("/comp.zip"), data_root=data_root, timeout=(2.0, 1.0), show_progress=False)
        waited = time.monotonic() - started
    assert waited < 1 + 10                       # the stall limit, not one read timeout per byte
    assert "\n" not in str(caught.value) and not (data_root / "comp").exists()


def test_a_transfer_that_keeps_moving_still_ends_at_the_total_limit(data_root):
    with DripServer(DripServer.headers(10**9), drip=b"x" * 70_000, every=0.1) as server:
        started = time.monotonic()
        with pytest.raises(DownloadError, match=r"took longer than the 2 s allowed.*run the same command again"):
            download(server.url("/comp.zip"), data_root=data_root, timeout=(2.0, 1.0), show_progress=False,
                     max_seconds=2)
        waited = time.monotonic() - started
    assert waited < 2 + 10
    assert (data_root / "comp.part").stat().st_size > 70_000       # what came is kept, to resume


# --- limits on what an archive unpacks to ------------------------------------------------------------

SIZE, FILES, RATIO = UnpackLimits(max_bytes=10_000), UnpackLimits(max_files=20), \
    UnpackLimits(max_ratio=50, ratio_from_bytes=100_000)


def _deflated_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("archive, name, limits, message, raised", [
    (make_zip({f"comp/{n}.jpg": os.urandom(5_000) for n in range(3)}), "comp.zip", SIZE,
     "would unpack to more than the 10.0 KB allowed", "--limits size=30.0KB"),
    (make_zip({f"comp/{n}.jpg": b"x" for n in range(25)}), "comp.zip", FILES,
     "holds 25 files and folders, more than the 20 allowed", "--limits files=200"),
    (_deflated_zip({"comp/zeros.bin": bytes(3_000_000)}), "comp.zip", RATIO,
     "would unpack to 3.0 MB from", "--limits ratio="),
    (make_tar({f"comp/{n}.jpg": os.urandom(4_000) for n in range(5)}), "comp.tar.gz", SIZE,
     "would unpack to more than the 10.0 KB allowed", "--limits size=24.0KB"),
    (make_tar({f"comp/{n}.jpg": b"x" for n in range(25)}), "comp.tar.gz", FILES,
     "holds more than the 20 files and folders allowed", "--limits files=200"),
    (make_tar({"comp/zeros.bin": bytes(3_000_000)}), "comp.tar.gz", RATIO, "times its size, more than the 50 allowed",
     "--limits ratio="),
])
def test_an_archive_over_a_limit_is_refused_naming_the_limit_and_how_to_raise_it(tmp_path, archive, name, limits,
                                                                                   message, raised):
    path = tmp_path / name
    path.write_bytes(archive)
    with pytest.raises(ArchiveTooBig) as caught:
        safe_unpack(path, tmp_path / "comp", limits=limits)
    assert message in str(caught.value) and raised in str(caught.value) and "nothing kept" in str(caught.value)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [name]          # no folder, no leftovers
    assert safe_unpack(path, tmp_path / "comp", limits=UnpackLimits()) == []      # the defaults take it
    assert (tmp_path / "comp" / "comp").is_dir()


def test_download_takes_its_limits_as_text_and_keeps_the_archive_to_try_again(server, data_root):
    server.files["/comp.zip"] = make_zip(competition_files(payload=2_000))
    with pytest.raises(ArchiveTooBig, match=r"more than the 5.0 KB allowed.*--limits size=\d+\.\dKB"):
        fetch(server.url("/comp.zip"), data_root, limits="size=5KB")
    assert (data_root / "comp.zip").is_file() and not (data_root / "comp").exists()
    requests_before = len(server.requests)
    result = fetch(server.url("/comp.zip"), data_root, limits="size=1MiB,files=100,ratio=10")
    assert result.competition is not None and len(server.requests) == requests_before   # not fetched again
    with pytest.raises(DownloadError, match="cannot read the unpacking limit 'size=lots'"):
        fetch(server.url("/comp.zip"), data_root, limits="size=lots")
    assert UnpackLimits.parse("size=40GB, files=500000 ,ratio=200") == UnpackLimits(40_000_000_000, 500_000, 200.0)
    assert UnpackLimits.parse("size=2GiB").max_bytes == 2 * 1024**3


def test_a_damaged_state_file_or_marker_is_read_as_none_not_a_traceback(server, data_root):
    server.files["/comp.zip"] = make_zip(competition_files())
    data_root.mkdir(parents=True)
    deep = "[" * 100_000 + "]" * 100_000
    (data_root / ".comp.download.json").write_text(deep)
    (data_root / "comp.part").write_bytes(b"leftover of who knows what")
    result = fetch(server.url("/comp.zip"), data_root)
    assert result.competition is not None and result.resumed_from == 0    # started over, nothing trusted
    (result.folder / MARKER_NAME).write_text('{"sha256": NaN}')
    with pytest.raises(DownloadError, match="not made by `invoke download`"):
        fetch(server.url("/comp.zip"), data_root)
