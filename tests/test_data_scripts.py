"""data_scripts: archive import in each real format, bad archives, resumable checksummed download.

Downloads are tested against a local HTTP server on 127.0.0.1 with Range support
(nothing leaves the machine).
"""
from __future__ import annotations

import hashlib
import http.server
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from data_scripts import archives, fixtures
from data_scripts.__main__ import main
from data_scripts.download import DownloadError, download
from labkit import data as D

SHARED_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _fails(argv: list[str], capsys, fragment: str) -> str:
    """Run the CLI expecting exit code 2 and one stderr line containing ``fragment``."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert fragment in err, err
    return err


# --------------------------------------------------------------------------- fixtures and imports
def test_fixtures_are_deterministic(tmp_path: Path, capsys):
    assert main(["fixtures", str(tmp_path / "a")]) == 0
    assert "cifar10 python-pickle" in capsys.readouterr().out
    fixtures.build_all(tmp_path / "b")
    for name in _files(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_cli_reports_what_it_did(tmp_path: Path, fixture_archives, capsys):
    assert main(["cifar10", "--from", str(fixture_archives["cifar10-folder"]), "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "image-folder" in out and "train 30, test 20 images" in out
    assert str(tmp_path / "cifar10" / "cifar10.npz") in out and re.search(r"in \d+\.\d s", out)
    assert _files(tmp_path) == ["cifar10/cifar10.npz"]
    assert main(["digits"]) == 0 and "nothing to prepare" in capsys.readouterr().out


def test_format_autodetect(fixture_archives):
    fmt, splits = archives.read_cifar10(fixture_archives["cifar10-pickle"])
    assert fmt == "python-pickle" and splits["train"][0].shape == (30, 3, 32, 32)
    fmt, splits = archives.read_cifar10(fixture_archives["cifar10-folder"])
    assert fmt == "image-folder" and splits["test"][0].shape == (20, 3, 32, 32)


def test_food11_zip_tar_and_folder_give_the_same_cache(tmp_path: Path, fixture_archives):
    tar = fixtures.food11_archive(tmp_path / "food-11.tar.gz", kind="tar")
    results = [archives.read_food11(p, size=24) for p in (fixture_archives["food11-zip"], tar,
                                                          fixture_archives["food11-dir"])]
    for split in ("train", "valid", "test"):
        x, y = results[0][split]
        assert x.shape == (11, 3, 24, 24) and x.dtype == np.uint8 and y.tolist() == list(range(11))
        for other in results[1:]:
            assert np.array_equal(other[split][0], x) and np.array_equal(other[split][1], y)


def test_food11_center_crops_before_resizing():
    from PIL import Image

    img = fixtures.synthetic_image(3, 0, height=40, width=56)  # wide: 8 columns cut on each side
    members = {f"{f}/3_0.jpg": fixtures._encode(img) for f in ("training", "validation", "evaluation")}
    got = archives.decode_image(("x.jpg", members["training/3_0.jpg"], 40))
    assert isinstance(got, np.ndarray) and got.shape == (3, 40, 40)
    center = img[:, :, 8:48]
    assert np.abs(got.astype(int) - center.astype(int)).mean() < 3  # the middle, not a squashed whole
    squashed = np.asarray(Image.fromarray(img.transpose(1, 2, 0)).resize((40, 40))).transpose(2, 0, 1)
    assert np.abs(got.astype(int) - squashed.astype(int)).mean() > np.abs(got.astype(int) - center.astype(int)).mean()


def test_decoding_with_a_process_pool(fixture_archives, monkeypatch):
    _, serial = archives.read_cifar10(fixture_archives["cifar10-folder"])
    monkeypatch.setattr(archives, "POOL_MIN_IMAGES", 1)
    _, pooled = archives.read_cifar10(fixture_archives["cifar10-folder"], workers=2)
    assert np.array_equal(serial["train"][0], pooled["train"][0])


# --------------------------------------------------------------------------- bad archives
def _folder_members(**changes) -> dict[str, bytes]:
    m = fixtures.cifar10_folder_members()
    for old, new in changes.items():
        m = {(k.replace(old, new) if new is not None else k): v for k, v in m.items()
             if new is not None or not k.startswith(old)}
    return m


def _bad_archive(kind: str, d: Path, archive_bytes: bytes) -> tuple[Path, str]:
    path = d / "archive.tar.gz"
    if kind == "not-an-archive":
        path.write_bytes(b"this is not an archive\n" * 50)
        return path, "not a tar or zip archive"
    if kind == "truncated":
        path.write_bytes(archive_bytes[: len(archive_bytes) // 2])
        return path, "truncated"
    if kind == "missing-split":
        fixtures.write_tar(path, _folder_members(test=None))
        return path, "has no test/<class>/*.jpg images"
    if kind == "wrong-classes":
        fixtures.write_tar(path, _folder_members(**{"/cat/": "/kitten/"}))
        return path, "unexpected: ['kitten'], missing: ['cat']"
    if kind == "bad-jpeg":
        m = fixtures.cifar10_folder_members()
        m["train/dog/0015.jpg"] = b"\xff\xd8 not really a jpeg"
        fixtures.write_tar(path, m)
        return path, "train/dog/0015.jpg is not a readable image"
    if kind == "missing-batch":
        m = fixtures.cifar10_pickle_members()
        del m["cifar-10-batches-py/data_batch_3"]
        fixtures.write_tar(path, m)
        return path, "lacks data_batch_3"
    if kind == "neither-format":
        fixtures.write_tar(path, {"images/cat/1.jpg": b"x", "README": b"hello"})
        return path, "holds neither cifar-10-batches-py/"
    if kind == "no-such-file":
        return d / "nowhere.tar.gz", "does not exist"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["not-an-archive", "truncated", "missing-split", "wrong-classes",
                                  "bad-jpeg", "missing-batch", "neither-format", "no-such-file"])
def test_bad_cifar10_archive_exits_2_and_leaves_nothing(kind, tmp_path: Path, fixture_archives, capsys):
    src = tmp_path / "src"
    src.mkdir()
    path, fragment = _bad_archive(kind, src, fixture_archives["cifar10-pickle"].read_bytes())
    root = tmp_path / "root"
    _fails(["cifar10", "--from", str(path), "--root", str(root)], capsys, fragment)
    assert not root.exists() or _files(root) == []


@pytest.mark.parametrize("kind", ["missing-split", "bad-label"])
def test_bad_food11_archive_exits_2_and_leaves_nothing(kind, tmp_path: Path, capsys):
    m = fixtures.food11_members()
    if kind == "missing-split":
        m = {k: v for k, v in m.items() if not k.startswith("evaluation/")}
        fragment = "lacks the split folder(s) evaluation/"
    else:
        m["training/11_0.jpg"] = m["training/0_0.jpg"]
        fragment = "has labels [11]"
    path = fixtures.write_zip(tmp_path / "food-11.zip", m)
    _fails(["food11", "--from", str(path), "--root", str(tmp_path / "root")], capsys, fragment)
    assert not (tmp_path / "root").exists()


# --------------------------------------------------------------------------- downloads
class _RangeServer:
    """An HTTP server on 127.0.0.1 serving one payload, with ``Range: bytes=N-`` support.

    ``cut_at``: the next response stops after that many body bytes (a dropped connection).
    ``honour_range=False`` answers every request with the whole file (200), like some mirrors.
    """

    def __init__(self, payload: bytes, honour_range: bool = True):
        self.payload, self.honour_range = payload, honour_range
        self.cut_at: int | None = None
        self.ranges: list[str | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (stdlib name)
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                data, start = server.payload, 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and server.honour_range:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_at is not None:
                    body, server.cut_at = body[: server.cut_at], None
                self.wfile.write(body)

            def log_message(self, *args):  # keep test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cifar-10-python.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(fixture_archives):
    payload = fixture_archives["cifar10-pickle"].read_bytes()
    srv = _RangeServer(payload)
    yield srv, payload, hashlib.sha256(payload).hexdigest()
    srv.close()


def test_download_verifies_and_skips_a_good_copy(served, tmp_path: Path):
    srv, payload, sha = served
    dest = download(srv.url, tmp_path / "a.tgz", sha256=sha, log=lambda s: None)
    assert dest.read_bytes() == payload and _files(tmp_path) == ["a.tgz"]
    download(srv.url, dest, md5=hashlib.md5(payload).hexdigest(), log=lambda s: None)
    assert len(srv.ranges) == 1  # second call: verified on disk, no request
    with pytest.raises(DownloadError, match="without a checksum"):
        download(srv.url, tmp_path / "b.tgz")


def test_download_resumes_a_partial_file(served, tmp_path: Path):
    srv, payload, sha = served
    (tmp_path / "a.tgz.part").write_bytes(payload[:1000])
    download(srv.url, tmp_path / "a.tgz", sha256=sha, log=lambda s: None)
    assert srv.ranges == ["bytes=1000-"]
    assert (tmp_path / "a.tgz").read_bytes() == payload and _files(tmp_path) == ["a.tgz"]


def test_interrupted_download_keeps_part_then_resumes(served, tmp_path: Path):
    srv, payload, sha = served
    srv.cut_at = 700
    with pytest.raises(DownloadError, match="resume"):
        download(srv.url, tmp_path / "a.tgz", sha256=sha, log=lambda s: None)
    assert (tmp_path / "a.tgz.part").stat().st_size == 700 and not (tmp_path / "a.tgz").exists()
    download(srv.url, tmp_path / "a.tgz", sha256=sha, log=lambda s: None)
    assert srv.ranges == [None, "bytes=700-"] and (tmp_path / "a.tgz").read_bytes() == payload


def test_complete_part_file_and_range_ignoring_server(served, tmp_path: Path):
    srv, payload, sha = served
    (tmp_path / "a.tgz.part").write_bytes(payload)  # already complete: server answers 416
    download(srv.url, tmp_path / "a.tgz", sha256=sha, log=lambda s: None)
    assert (tmp_path / "a.tgz").read_bytes() == payload
    srv.honour_range = False
    (tmp_path / "b.tgz.part").write_bytes(b"stale bytes from another file")
    download(srv.url, tmp_path / "b.tgz", sha256=sha, log=lambda s: None)
    assert (tmp_path / "b.tgz").read_bytes() == payload  # restarted from zero, not appended


def test_corrupt_download_is_deleted(served, tmp_path: Path):
    srv, payload, _ = served
    srv.payload = payload[:-10] + b"0123456789"  # same length, wrong bytes
    with pytest.raises(DownloadError, match="arrived corrupt"):
        download(srv.url, tmp_path / "a.tgz", sha256=hashlib.sha256(payload).hexdigest(), log=lambda s: None)
    assert _files(tmp_path) == []


def test_cli_download_imports_and_cleans_up(served, tmp_path: Path, capsys):
    srv, payload, sha = served
    root = tmp_path / "root"
    assert main(["cifar10", "--url", srv.url, "--sha256", sha, "--root", str(root)]) == 0
    assert _files(root) == ["cifar10/cifar10.npz"]  # the archive is deleted once decoded
    train, test = D.load_cifar10(root)
    assert (len(train), len(test)) == (30, 20)
    capsys.readouterr()
    bad_root = tmp_path / "bad"
    _fails(["cifar10", "--url", srv.url, "--sha256", "0" * 64, "--root", str(bad_root)], capsys, "arrived corrupt")
    assert _files(bad_root) == []


# --------------------------------------------------------------------------- the real archive, if present
@pytest.mark.skipif(not SHARED_ARCHIVE.is_file(), reason="shared/datasets/cifar10-jpeg.tar.gz not present")
def test_shared_cifar10_archive_checksum_and_a_slice():
    expected = (SHARED_ARCHIVE.parent / (SHARED_ARCHIVE.name + ".sha256")).read_text().split()[0]
    assert hashlib.sha256(SHARED_ARCHIVE.read_bytes()).hexdigest() == expected
    seen = 0
    for name, data in archives.iter_files(SHARED_ARCHIVE, lambda n: n.endswith(".jpg")):
        split, cls, _ = name.split("/")
        assert split in ("train", "test") and cls in D.CIFAR10_CLASSES
        img = archives.decode_image((name, data, None))
        assert isinstance(img, np.ndarray) and img.shape == (3, 32, 32) and img.dtype == np.uint8
        seen += 1
        if seen == 200:  # a slice: decoding all 60,000 belongs to the one-off preparation
            break
    assert seen == 200
