"""scripts/download_coco.py against a local file server (127.0.0.1, tiny archives): the
COCO layout comes out, an interrupted download resumes with a Range request, a corrupt
archive is refused, a finished one is skipped. Nothing reaches the internet."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "download_coco.py"
spec = importlib.util.spec_from_file_location("download_coco", SCRIPT)
download_coco = importlib.util.module_from_spec(spec)
spec.loader.exec_module(download_coco)


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=N-`` support (the stdlib handler has none)."""

    ranges: list = []  # the Range headers seen, per server (set in the fixture)

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        header = self.headers.get("Range")
        self.ranges.append(header)
        start = int(header.removeprefix("bytes=").rstrip("-")) if header else 0
        if start >= len(data) and header:
            self.send_error(416)
            return
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


def _zip(members: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, content in members.items():
            z.writestr(name, content)
    return buf.getvalue()


@pytest.fixture
def server(tmp_path):
    site = tmp_path / "site"
    (site / "zips").mkdir(parents=True)
    (site / "annotations").mkdir()
    val = _zip({f"val2017/{i:012d}.jpg": bytes(range(256)) * (20 + i) for i in range(3)})
    ann = _zip({"annotations/instances_val2017.json": json.dumps({"images": [], "annotations": [], "categories": []}),
                "annotations/instances_train2017.json": "{}"})
    (site / "zips" / "val2017.zip").write_bytes(val)
    (site / "annotations" / "annotations_trainval2017.zip").write_bytes(ann)
    archives = {"val": ("zips/val2017.zip", hashlib.md5(val).hexdigest()),
                "annotations": ("annotations/annotations_trainval2017.zip", hashlib.md5(ann).hexdigest())}
    handler = type("Handler", (RangeHandler,), {"ranges": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{httpd.server_port}", "archives": archives, "site": site,
           "val": val, "ranges": handler.ranges}
    httpd.shutdown()
    httpd.server_close()


def test_download_check_unpack_and_skip(server, tmp_path, capsys):
    root = tmp_path / "coco"
    for name in ("annotations", "val"):
        download_coco.download_archive(name, root, server["url"], server["archives"])
    assert sorted(p.name for p in (root / "val2017").iterdir()) == [f"{i:012d}.jpg" for i in range(3)]
    assert (root / "val2017" / "000000000001.jpg").read_bytes() == bytes(range(256)) * 21
    assert json.loads((root / "annotations" / "instances_val2017.json").read_text())["images"] == []
    assert not list(root.glob("*.zip")) and not list(root.glob("*.part"))  # zips removed after unpacking
    n_requests = len(server["ranges"])
    download_coco.download_archive("val", root, server["url"], server["archives"])
    assert len(server["ranges"]) == n_requests  # done before: no request at all
    assert "already downloaded" in capsys.readouterr().out


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    root = tmp_path / "coco"
    root.mkdir()
    half = len(server["val"]) // 2
    (root / "val2017.zip.part").write_bytes(server["val"][:half])  # what a killed run leaves
    download_coco.download_archive("val", root, server["url"], server["archives"], keep_zip=True)
    assert server["ranges"] == [f"bytes={half}-"]
    assert (root / "val2017.zip").read_bytes() == server["val"]
    assert len(list((root / "val2017").iterdir())) == 3


def test_corrupt_archive_is_refused(server, tmp_path, capsys):
    root = tmp_path / "coco"
    bad = dict(server["archives"], val=("zips/val2017.zip", "0" * 32))
    with pytest.raises(download_coco.DownloadError, match="val2017.zip: MD5 .* does not match"):
        download_coco.download_archive("val", root, server["url"], bad)
    assert server["ranges"] == [None, None]  # tried twice, each time from scratch
    assert not (root / "val2017").exists() and not list(root.glob("val2017.zip*"))


def test_command_line_errors_are_one_line(server, tmp_path, capsys):
    rc = download_coco.main(["--root", str(tmp_path / "coco"), "--only", "train", "--base-url", server["url"]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "train2017.zip" in err[0] and "404" in err[0]
    assert set(download_coco.ARCHIVES) == {"annotations", "val", "train"}
    assert all(len(md5) == 32 for _, md5 in download_coco.ARCHIVES.values())
