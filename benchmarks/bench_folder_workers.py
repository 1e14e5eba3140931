"""Folder throughput of ``predict --workers N``: photos per second for 1 and 2 workers, both models.

    python benchmarks/bench_folder_workers.py [--files 40] [--workers 1 2] [--models release fast]
        [--repeats 3] [--photos DIR ...]

The folder: the JPEGs of ``--photos`` (default: the 9 ground-truth photos of
``../shared/data/photos`` and the bundled ``tests/data/photos``, with the dog photo; one file
per name), linked again and again into a temporary folder up to ``--files``. Each run is the
command a user types, ``python -m pipelines.predict FOLDER --csv ... --workers N [--model
fast]``, in a fresh interpreter, timed from start to exit (wall) with its CPU time, the
workers' included (``RUSAGE_CHILDREN``). The runs alternate (each model, each N, then again)
so that a change of load on a shared machine hits every setting alike; the median of
``--repeats`` is reported.

photos/s is given twice: end to end (files / wall) and net of start-up (TensorFlow, the
model, the first photo: the same command on one photo, timed the same way, taken off), which
is what a long folder approaches. The CSVs of all worker counts are compared: a difference is
reported as an error (``--workers`` must not change a row).

Quote the machine with the numbers: the output starts with ``/proc/cpuinfo``'s model name,
the core count and ``uptime``, and gives the load average before each run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PHOTOS = (REPO.parent / "shared" / "data" / "photos", REPO / "tests" / "data" / "photos")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def photo_folder(sources, files: int, folder: Path) -> Path:
    """``files`` links in ``folder`` to the JPEGs of ``sources`` (one per name), round and round."""
    photos = {}
    for source in sources:
        for photo in sorted(Path(source).glob("*.jpg")):
            photos.setdefault(photo.name, photo.resolve())
    if not photos:
        sys.exit(f"error: no .jpg in {', '.join(map(str, sources))}")
    folder.mkdir(parents=True)
    names = sorted(photos)
    for k in range(files):
        name = names[k % len(names)]
        (folder / f"{k:04d}_{name}").symlink_to(photos[name])
    return folder


def predict_command(folder: Path, csv: Path, model: str, workers: int) -> list[str]:
    command = [sys.executable, "-m", "pipelines.predict", str(folder), "--csv", str(csv), "--force", "--quiet",
               "--workers", str(workers)]
    return command + (["--model", model] if model != "release" else [])


def timed_run(command: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the process and its workers) of ``command``, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        sys.exit(f"error: {shlex.join(command)} exited {run.returncode}:\n{run.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=40, help="photos in the folder (links to --photos, repeated)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to time")
    p.add_argument("--models", nargs="+", default=["release", "fast"], help="release (the default model) and/or fast")
    p.add_argument("--repeats", type=int, default=3, help="runs per setting; the median is reported")
    p.add_argument("--photos", type=Path, nargs="+", default=list(PHOTOS), help="folders of JPEGs to fill it from")
    args = p.parse_args(argv)

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; {uptime()}")
    with tempfile.TemporaryDirectory(prefix="bench_folder_workers_") as tmp:
        tmp = Path(tmp)
        folder = photo_folder(args.photos, args.files, tmp / "photos")
        one = photo_folder(args.photos, 1, tmp / "one")
        print(f"folder: {args.files} files, {len({p.resolve() for p in folder.iterdir()})} distinct photos, "
              f"from {', '.join(map(str, args.photos))}")
        settings = [(model, workers) for model in args.models for workers in args.workers]
        times = {setting: [] for setting in settings}
        start_up = {model: [] for model in args.models}
        for repeat in range(args.repeats):
            for model in args.models:
                command = predict_command(one, tmp / f"one_{model}.csv", model, 1)
                start_up[model].append(timed_run(command))
                for workers in args.workers:
                    command = predict_command(folder, tmp / f"{model}_w{workers}.csv", model, workers)
                    load = os.getloadavg()[0]
                    times[(model, workers)].append(timed_run(command))
                    wall, cpu = times[(model, workers)][-1]
                    print(f"  round {repeat + 1}, load {load:.2f}: {shlex.join(command)}  ->  {wall:.1f} s wall, "
                          f"{cpu:.1f} s CPU", flush=True)
        differ = [f"{model} --workers {w}" for model in args.models for w in args.workers
                  if (tmp / f"{model}_w{w}.csv").read_bytes() != (tmp / f"{model}_w{args.workers[0]}.csv").read_bytes()]
        print_table(args, settings, times, start_up)
    print(f"after: {uptime()}")
    if differ:
        print(f"error: the CSV differs from --workers {args.workers[0]}'s for {', '.join(differ)}", file=sys.stderr)
        return 1
    print(f"the CSVs of --workers {', '.join(map(str, args.workers))} are identical, per model")
    return 0


def print_table(args, settings, times, start_up) -> None:
    print(f"\n| model | --workers | wall s, median of {args.repeats} | CPU s | photos/s end to end "
          f"| one-photo run, s | photos/s net of start-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model, workers in settings:
        wall = statistics.median(w for w, _ in times[(model, workers)])
        cpu = statistics.median(c for _, c in times[(model, workers)])
        base = statistics.median(w for w, _ in start_up[model])
        net = (args.files - 1) / (wall - base) if wall > base else float("nan")
        print(f"| {model} | {workers} | {wall:.1f} | {cpu:.1f} | {args.files / wall:.2f} | {base:.1f} | {net:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
