"""Download COCO 2017 (train/val images and annotations) into the layout the trainer reads.

    python scripts/download_coco.py                     # everything into data/coco (~19 GB of zips)
    python scripts/download_coco.py --only val annotations   # val2017 + annotations (~1 GB)

Result::

    data/coco/train2017/*.jpg   data/coco/val2017/*.jpg
    data/coco/annotations/instances_{train,val}2017.json (and the other annotation files)

Interrupted downloads resume where they stopped (HTTP Range requests on ``NAME.part``);
each archive is checked against its published MD5 before it is unpacked (a mismatch is
downloaded once more from scratch, then reported); an archive already unpacked is
skipped on the next run. Standard library only (plus tqdm for progress bars, if present).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

BASE_URL = "http://images.cocodataset.org"
# name -> (path on the server, MD5 published with the COCO 2017 release)
ARCHIVES = {
    "annotations": ("annotations/annotations_trainval2017.zip", "f4bbac642086de4f52a3fdda2de5fa2c"),
    "val": ("zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80"),
    "train": ("zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2"),
}
CHUNK = 1 << 20


class DownloadError(Exception):
    """One line that names the archive."""


def _progress(total: int | None, initial: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # no bars, same result
        class _Quiet:
            def update(self, n): pass
            def close(self): pass
        return _Quiet()
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False)


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, part: Path, timeout: float = 60) -> None:
    """Download ``url`` to ``part``, continuing from the bytes already there."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # nothing left to send: the file is complete
            return
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url}: cannot connect ({getattr(e, 'reason', e)})") from None
    with response:
        resumed = response.status == 206
        if have and not resumed:  # the server ignored the range: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        bar = _progress(total, have, part.name.removesuffix(".part"))
        with open(part, "ab" if resumed else "wb") as f:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
        bar.close()
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"{url}: connection closed after {part.stat().st_size} of {total} bytes; "
                            f"run again to resume")


def download_archive(name: str, root: Path, base_url: str, archives: dict = ARCHIVES,
                     keep_zip: bool = False, extract: bool = True) -> None:
    """Fetch, check and unpack one archive of ``archives`` into ``root``."""
    remote, md5 = archives[name]
    root.mkdir(parents=True, exist_ok=True)
    zip_path = root / Path(remote).name
    done_marker = root / f".{zip_path.name}.done"
    if done_marker.exists():
        print(f"{name}: already downloaded and unpacked ({zip_path.name})")
        return
    url = f"{base_url.rstrip('/')}/{remote}"
    part = zip_path.with_name(zip_path.name + ".part")
    if not zip_path.exists():
        for attempt in range(2):
            fetch(url, part)
            got = md5sum(part)
            if got == md5:
                part.replace(zip_path)
                break
            part.unlink()  # a corrupt file cannot be resumed: start over once
            if attempt == 1:
                raise DownloadError(f"{zip_path.name}: MD5 {got} does not match the published {md5} "
                                    f"(downloaded twice from {url})")
    elif md5sum(zip_path) != md5:
        zip_path.unlink()
        raise DownloadError(f"{zip_path}: MD5 does not match the published {md5}; deleted it, run again")
    if not extract:
        return
    try:
        with zipfile.ZipFile(zip_path) as z:
            z.extractall(root)
    except (zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f"{zip_path}: cannot unpack ({e})") from None
    done_marker.write_text(md5 + "\n")
    if not keep_zip:
        zip_path.unlink()
    print(f"{name}: unpacked {zip_path.name} into {root}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("data/coco"), help="where the COCO layout goes (default data/coco)")
    p.add_argument("--only", nargs="+", choices=list(ARCHIVES), default=list(ARCHIVES),
                   help="which archives (default: annotations val train)")
    p.add_argument("--base-url", default=BASE_URL, help="mirror to download from (default %(default)s)")
    p.add_argument("--keep-zips", action="store_true", help="keep the archives after unpacking")
    p.add_argument("--no-extract", action="store_true", help="download and check only")
    args = p.parse_args(argv)
    try:
        for name in args.only:
            download_archive(name, args.root, args.base_url, keep_zip=args.keep_zips, extract=not args.no_extract)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
