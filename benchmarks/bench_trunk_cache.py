"""What keeping a cached-trunk run's views on disk costs, at full size.

A run on cached trunk outputs (``--cached-views``) keeps each view in ``.run/trunk_cache/``
(:class:`ensemble_fer.training.cached_trunk.ViewStore`) so that a resume reads them back instead
of running the frozen trunk again. This times, through ``ViewStore`` itself, writing every view
and reading it back *cold* (the files' pages are dropped from the page cache first, as after a
new session), for the cache of a real run: by default release 0.9's 128 px face-trunk member
with the BOVW branch (6 views of 28,697 training crops cut at ``conv_dw_7``: 8x8x512 uint8 steps
per crop, plus 2,728 BOVW values). Computing one such view took about 5 minutes on a 2-core CPU
(session 19: 1,868 s for 6 views); that is what a read replaces.

    python benchmarks/bench_trunk_cache.py [--rows 28697] [--views 6] [--cut 8 8 512] [--no-bovw]
        [--dir DIR]

The arrays are random (``.npy`` is not compressed, so their content does not matter to the time).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ensemble_fer.features.bovw import BOVW_SIZE  # noqa: E402
from ensemble_fer.training.cached_trunk import ViewStore  # noqa: E402


def drop_from_page_cache(folder: Path) -> None:
    """Evict the folder's files from the page cache (written and synced first), so a read is cold."""
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=28_697)
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--cut", type=int, nargs="+", default=[8, 8, 512], help="one crop's cached shape")
    parser.add_argument("--no-bovw", action="store_true")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    features = rng.integers(0, 256, (args.rows, *args.cut), dtype=np.uint8)
    rows = None if args.no_bovw else rng.standard_normal((args.rows, BOVW_SIZE), dtype=np.float32)
    size = (features.nbytes + (0 if rows is None else rows.nbytes)) / 2**30
    parent = Path(tempfile.mkdtemp(dir=args.dir, prefix="trunk_cache_bench_"))
    try:
        store = ViewStore(parent / "train", key="bench")
        start = time.perf_counter()
        writes = []
        for view in range(args.views):
            t = time.perf_counter()
            store.write(view, features, rows)
            os.sync()
            writes.append(time.perf_counter() - t)
        total_write = time.perf_counter() - start
        drop_from_page_cache(store.folder)
        out = np.empty_like(features)
        out_rows = None if rows is None else np.empty_like(rows)
        reads = []
        for view in range(args.views):
            t = time.perf_counter()
            assert store.read(view, out, out_rows), "a view written was not read back"
            reads.append(time.perf_counter() - t)
        assert np.array_equal(out, features)
        print(f"{args.views} view(s) of {args.rows:,} rows x {tuple(args.cut)} uint8"
              f"{'' if rows is None else f' + {BOVW_SIZE} float32 BOVW'}: {size:.2f} GiB a view, "
              f"{size * args.views:.2f} GiB in all")
        print(f"write (synced): {total_write:.1f} s in all, {np.median(writes):.1f} s a view "
              f"({size / np.median(writes):.2f} GiB/s)")
        print(f"cold read:      {sum(reads):.1f} s in all, {np.median(reads):.1f} s a view "
              f"({size / np.median(reads):.2f} GiB/s)")
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
