"""``python -m data_scripts <dataset> [--from ARCHIVE] [--root DIR] [--size N]`` and ``fixtures DIR``.

Examples::

    python -m data_scripts cifar10 --from ../shared/datasets/cifar10-jpeg.tar.gz
    python -m data_scripts cifar10                      # download the official archive
    python -m data_scripts food11 --from food-11.zip --size 64
    python -m data_scripts fixtures /tmp/fixtures        # tiny archives in each format

Exit code 0 on success, 2 with one line on stderr when the input is wrong.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from data_scripts.archives import ArchiveError, read_cifar10, read_food11
from data_scripts.download import DownloadError, download
from labkit.data import CIFAR10_CLASSES, FOOD11_CLASSES, cache_path, write_cache
from labkit.profile import default_data_root

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published on the CIFAR-10 page


def _report(name: str, path: Path, splits: dict, t0: float, what: str) -> None:
    counts = ", ".join(f"{s} {len(y):,}" for s, (_, y) in splits.items())
    mb = path.stat().st_size / 1e6
    print(f"{name}: {what}: {counts} images -> {path} ({mb:.1f} MB) in {time.time() - t0:.1f} s")


def cmd_cifar10(args: argparse.Namespace) -> None:
    t0 = time.time()
    root = Path(args.root).expanduser()
    downloaded = None
    source = args.source
    if source is None:
        dest = root / "downloads" / Path(args.url).name
        source = downloaded = download(args.url, dest, sha256=args.sha256,
                                       md5=None if args.sha256 else CIFAR10_MD5)
        print(f"verified {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
    fmt, splits = read_cifar10(Path(source), workers=args.workers)
    path = write_cache(cache_path("cifar10", root), splits, CIFAR10_CLASSES)
    if downloaded is not None:
        downloaded.unlink()  # decoded into the cache; the 170 MB archive is no longer needed
    _report("cifar10", path, splits, t0, f"imported {fmt} archive {source}")


def cmd_food11(args: argparse.Namespace) -> None:
    t0 = time.time()
    if args.source is None:
        raise ArchiveError("Food-11 has no stable download URL: get food-11.zip (e.g. from Kaggle) "
                           "and pass it with --from")
    splits = read_food11(Path(args.source), args.size, workers=args.workers)
    path = write_cache(cache_path("food11", Path(args.root).expanduser(), args.size), splits, FOOD11_CLASSES)
    _report("food11", path, splits, t0, f"imported {args.source} at {args.size}x{args.size}")


def cmd_digits(args: argparse.Namespace) -> None:
    print("digits: nothing to prepare, the 1,797 images ship with scikit-learn "
          "(labkit.data.load_digits32 renders them to 32x32 RGB)")


def cmd_fixtures(args: argparse.Namespace) -> None:
    from data_scripts.fixtures import build_all

    for what, path in build_all(Path(args.dir)).items():
        print(f"{what}: {path} ({path.stat().st_size:,} bytes)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_scripts", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--from", dest="source", metavar="ARCHIVE",
                        help="a downloaded archive (.tar.gz / .zip) or its unpacked folder")
        sp.add_argument("--root", default=str(default_data_root()),
                        help="data root (default: $LABKIT_DATA_ROOT or ~/.cache/labkit/data)")
        sp.add_argument("--workers", type=int, default=2, help="processes decoding JPEGs (default 2)")

    c = sub.add_parser("cifar10", help="CIFAR-10 from the python archive or train/ test/ image folders")
    common(c)
    c.add_argument("--url", default=CIFAR10_URL, help="download from this mirror instead of the official URL")
    c.add_argument("--sha256", help="expected sha256 of the download (default: the official archive's md5)")
    c.set_defaults(func=cmd_cifar10)
    f = sub.add_parser("food11", help="Food-11 from its zip (training/ validation/ evaluation/)")
    common(f)
    f.add_argument("--size", type=int, default=64, help="side of the square images (default 64)")
    f.set_defaults(func=cmd_food11)
    d = sub.add_parser("digits", help="nothing to do: embedded in scikit-learn")
    d.set_defaults(func=cmd_digits)
    x = sub.add_parser("fixtures", help="write tiny archives in each format to DIR")
    x.add_argument("dir", metavar="DIR")
    x.set_defaults(func=cmd_fixtures)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ArchiveError, DownloadError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)  # always exactly one line
        return 2
    except OSError as e:  # disk full, permissions, ...: still one line, not a traceback
        print(f"error: {e.strerror or e} ({e.filename or ''}); check the path and free space", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
