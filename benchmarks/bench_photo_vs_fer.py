"""Per-photo time and faces found: the installed ``ensemble-fer`` against fer, on the same photos (issue 27).

    nice -n 10 python3 benchmarks/bench_photo_vs_fer.py --fer-python /work/venv-fer/bin/python \\
        [--photos ../shared/data/photos] [--cold-repeats 3] [--warm-repeats 5] [--json out.json]

Each tool is run as its documentation tells a user to run it; nothing of fer is in the repository
(install it in a venv of its own and pass that venv's interpreter as ``--fer-python``).

* ours: the installed console command, ``ensemble-fer predict PHOTO`` (the release, its default
  ``--upsample auto``) and ``ensemble-fer predict PHOTO --model fast`` (its default ``fast``
  search), found next to this interpreter (``--ensemble-fer``: another one); in one process,
  the public API: ``EmotionRecognizer.load()`` / ``.load("fast")``, then ``.predict(path)``.
* fer: its README's snippet, ``img = cv2.imread(path); FER().detect_emotions(img)`` (its default
  detector, OpenCV's Haar cascade, and in fer 25.10 its default quantized TFLite network).
  ``from fer import FER`` is tried first, as the README writes it, then ``from fer.fer import FER``
  (fer 25.10.3's ``fer/__init__.py`` no longer imports ``FER``); the output says which worked.

1. Cold, end to end: a fresh process per photo, from a scratch folder outside the repository
   (ours: ``ensemble-fer predict PHOTO [--model fast]``, the CSV on stdout; fer: ``FER_PYTHON -c``
   with the README's snippet, printing its result), on the one-face photo and on
   ``2008_002470.jpg`` (the 6-face photo of docs/INSTALLED.md's time to first prediction).
   Rounds alternate the tools (release, fer, fast; the next round fast, fer, release), so that a
   change of load hits all alike; median wall seconds over ``--cold-repeats`` rounds, with the
   children's CPU seconds (``resource.getrusage(RUSAGE_CHILDREN)``).
2. Warm, one process per tool: two worker processes (ours with both models loaded; fer with one
   ``FER()``), each timing its own call (wall ``perf_counter`` and ``process_time``), driven photo
   by photo in the same alternating order. After one untimed first call per photo (its time is
   reported as the first call), median of ``--warm-repeats`` rounds per photo; then the mean over
   photos. Also the time from the worker's start to its model being ready (imports and loading).
3. Faces found on the photos with ground truth (the imglab XML files of ``--photos``, as
   ``bench_detect.py`` reads them): a ground-truth face is found when its centre lies inside a
   detected box (the rule of RESULTS.md's fast-photo-path section), and, stricter, when a box
   overlaps it with IoU >= 0.5 (one box per face, greedy by IoU); a box that holds no
   ground-truth centre is an extra. The photos: the 640x480 one-face photo of
   ``bench_predict.py``, every photo of ``--photos`` the XML lists, and ``dogs.jpg`` there (no
   face; every box on it is an extra).

Threads, detection settings and models are each tool's defaults: nothing is pinned, as a user
runs them. On a shared machine quote the load (the output prints ``os.getloadavg()``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLD_PHOTO = "2008_002470.jpg"
TOOLS = ("release", "fer", "fast")

FER_SNIPPET = """\
try:
    from fer import FER                 # as fer's README writes it
except ImportError:
    from fer.fer import FER             # fer 25.10.3: fer/__init__.py does not import FER
import cv2, sys
img = cv2.imread(sys.argv[1])
detector = FER()
print(detector.detect_emotions(img))
"""


# ---------------------------------------------------------------------------- workers
def serve(tool: str) -> None:
    """A worker: load the tool, then answer ``VARIANT\\tPATH`` lines with one JSON line each."""
    started = time.perf_counter()
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                       # the libraries' own prints go to stderr, not into the replies
    if tool == "fer":
        import cv2
        try:
            from fer import FER
            imported = "from fer import FER"
        except ImportError:
            from fer.fer import FER
            imported = "from fer.fer import FER"
        import fer as fer_package
        detector = FER()

        def predict(_variant, path):
            found = detector.detect_emotions(cv2.imread(path))
            return [([int(x), int(y), int(x) + int(w) - 1, int(y) + int(h) - 1],
                     max(f["emotions"], key=f["emotions"].get)) for f in found for x, y, w, h in [f["box"]]]

        about = {"imported": imported, "version": fer_package.__version__, "cv2": cv2.__version__}
    else:
        from ensemble_fer import EmotionRecognizer
        import ensemble_fer

        recognizers = {"release": EmotionRecognizer.load(), "fast": EmotionRecognizer.load("fast")}

        def predict(variant, path):
            return [(list(map(int, f.box)), f.emotion) for f in recognizers[variant].predict(path)]

        about = {"ensemble_fer": ensemble_fer.__file__, "recognizers": {k: repr(v) for k, v in recognizers.items()}}
    import tensorflow as tf

    about.update(tensorflow=tf.__version__, ready_s=time.perf_counter() - started)
    reply.write(json.dumps(about) + "\n")
    for line in sys.stdin:
        variant, path = line.rstrip("\n").split("\t")
        wall, cpu = time.perf_counter(), time.process_time()
        faces = predict(variant, path)
        reply.write(json.dumps({"wall_ms": 1000 * (time.perf_counter() - wall),
                                "cpu_ms": 1000 * (time.process_time() - cpu), "faces": faces}) + "\n")


class Worker:
    def __init__(self, python: str, tool: str, log: Path):
        self.log = log
        self.process = subprocess.Popen([python, str(Path(__file__).resolve()), "--worker", tool],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("w"),
                                        text=True, bufsize=1, cwd=tempfile.gettempdir())
        self.about = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            sys.exit(f"error: a worker stopped; its stderr: {self.log}\n{self.log.read_text()[-2000:]}")
        return json.loads(line)

    def __call__(self, variant: str, path: Path) -> dict:
        self.process.stdin.write(f"{variant}\t{path}\n")
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


# ---------------------------------------------------------------------------- faces found
def iou(a, b) -> float:
    """Intersection over union of two inclusive (left, top, right, bottom) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if w <= 0 or h <= 0:
        return 0.0
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)
    return w * h / (area(a) + area(b) - w * h)


def found(boxes, truth) -> tuple[int, int, int]:
    """(faces found by the centre rule, found at IoU >= 0.5 one box each, extra boxes)."""
    from bench_detect import contains

    gt = [(left, top, left + w - 1, top + h - 1) for left, top, w, h in truth]
    centres = [((g[0] + g[2]) / 2, (g[1] + g[3]) / 2) for g in gt]
    by_centre = sum(any(contains(b, c) for b in boxes) for c in centres)
    extras = sum(not any(contains(b, c) for c in centres) for b in boxes)
    pairs = sorted(((iou(b, g), i, j) for i, b in enumerate(boxes) for j, g in enumerate(gt)), reverse=True)
    used_b, used_g = set(), set()
    for score, i, j in pairs:
        if score >= 0.5 and i not in used_b and j not in used_g:
            used_b.add(i)
            used_g.add(j)
    return by_centre, len(used_g), extras


# ---------------------------------------------------------------------------- the runs
def order(round_: int) -> tuple[str, ...]:
    return TOOLS if round_ % 2 == 0 else TOOLS[::-1]


def cold(commands: dict, photos: list[Path], repeats: int, scratch: Path) -> dict:
    """{(tool, photo name): (median wall s, median CPU s, faces printed)} of a fresh process per call."""
    times = {}
    for r in range(repeats):
        for photo in photos:
            for tool in order(r):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                done = subprocess.run(commands[tool] + [str(photo)], cwd=scratch, capture_output=True, text=True)
                wall = time.perf_counter() - start
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                if done.returncode:
                    sys.exit(f"error: {' '.join(commands[tool])} {photo} exited {done.returncode}:\n{done.stderr[-2000:]}")
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                n = done.stdout.count("'box'") if tool == "fer" else len(done.stdout.strip().splitlines()) - 1
                times.setdefault((tool, photo.name), []).append((wall, cpu, n))
                print(f"  cold round {r + 1} {tool:7} {photo.name}: {wall:.2f} s (CPU {cpu:.2f} s), {n} faces",
                      flush=True)
    return {k: (statistics.median(w for w, _, _ in v), statistics.median(c for _, c, _ in v), v[-1][2])
            for k, v in times.items()}


def warm(workers: dict, photos: list[Path], repeats: int) -> tuple[dict, dict, dict]:
    """Per (tool, photo name): first-call ms, (median wall ms, median CPU ms), the boxes found."""
    call = {"release": lambda p: workers["ours"]("release", p), "fast": lambda p: workers["ours"]("fast", p),
            "fer": lambda p: workers["fer"]("fer", p)}
    first, boxes, times = {}, {}, {}
    for photo in photos:
        for tool in TOOLS:
            answer = call[tool](photo)
            first[tool, photo.name] = answer["wall_ms"]
            boxes[tool, photo.name] = [b for b, _ in answer["faces"]]
    for r in range(repeats):
        for photo in photos:
            for tool in order(r):
                answer = call[tool](photo)
                times.setdefault((tool, photo.name), []).append((answer["wall_ms"], answer["cpu_ms"]))
        print(f"  warm round {r + 1} of {repeats} done, load {os.getloadavg()[0]:.1f}", flush=True)
    medians = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    return first, medians, boxes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fer-python", help="the interpreter of a venv with fer installed (required)")
    p.add_argument("--ensemble-fer", default=str(Path(sys.executable).parent / "ensemble-fer"),
                   help="the installed console command (default: next to this interpreter)")
    p.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "photos")
    p.add_argument("--cold-repeats", type=int, default=3)
    p.add_argument("--warm-repeats", type=int, default=5)
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--worker", choices=("ours", "fer"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        serve(args.worker)
        return 0
    if not args.fer_python or not Path(args.fer_python).is_file():
        p.error(f"--fer-python: the interpreter of a venv with fer installed is required (got {args.fer_python!r})")

    sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
    from bench_detect import ground_truth
    from bench_predict import one_face_photo

    truth = ground_truth(args.photos)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        portrait = one_face_photo(scratch / "one_face_640x480.jpg")
        truth[portrait.name] = None     # one face, no imglab box: counted, not matched
        photos = [portrait] + [args.photos / name for name in sorted(truth) if name != portrait.name]
        if (args.photos / "dogs.jpg").is_file():
            photos.append(args.photos / "dogs.jpg")
            truth["dogs.jpg"] = []
        load = lambda: ", ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"{time.strftime('%H:%M:%S', time.gmtime())} UTC, load average {load()}; {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs; {len(photos)} photos", flush=True)

        commands = {"release": [args.ensemble_fer, "predict"], "fast": [args.ensemble_fer, "predict", "--model", "fast"],
                    "fer": [args.fer_python, "-c", FER_SNIPPET]}
        cold_photos = [portrait, args.photos / COLD_PHOTO]
        cold_times = cold(commands, cold_photos, args.cold_repeats, scratch)
        print(f"{time.strftime('%H:%M:%S', time.gmtime())} UTC, load average {load()}: warm workers", flush=True)

        workers = {"ours": Worker(sys.executable, "ours", scratch / "ours.log"),
                   "fer": Worker(args.fer_python, "fer", scratch / "fer.log")}
        try:
            first, medians, boxes = warm(workers, photos, args.warm_repeats)
        finally:
            for w in workers.values():
                w.close()
        print(f"{time.strftime('%H:%M:%S', time.gmtime())} UTC, load average {load()}: done", flush=True)

    print("\nworkers:", json.dumps({k: w.about for k, w in workers.items()}, indent=1))
    print("\n### Cold: a fresh process per photo (median s of", args.cold_repeats, "rounds; CPU s)")
    print("| photo | ours release | fer | ours fast |\n| --- | ---: | ---: | ---: |")
    for photo in cold_photos if args.cold_repeats else []:
        cells = [f"{cold_times[t, photo.name][0]:.2f} ({cold_times[t, photo.name][1]:.2f}), "
                 f"{cold_times[t, photo.name][2]} faces" for t in TOOLS]
        print(f"| {photo.name} | " + " | ".join(cells) + " |")

    print(f"\n### Warm: one process per tool (median ms of {args.warm_repeats} rounds (CPU ms); first call ms; faces "
          "found by centre / IoU>=0.5 of ground truth, extra boxes)")
    print("| photo | GT faces | ours release | fer | ours fast |\n| --- | ---: | ---: | ---: | ---: |")
    totals = {t: [0, 0, 0, 0] for t in TOOLS}
    rows = []
    for photo in photos:
        gt = truth[photo.name]
        cells = []
        for t in TOOLS:
            wall, cpu = medians[t, photo.name]
            b = boxes[t, photo.name]
            if gt is None:
                score = f"{len(b)} box(es)"
            else:
                c, i, e = found(b, gt)
                score = f"{c}/{i} of {len(gt)}, +{e}"
                if gt:      # the photos with faces; dogs.jpg's extras stay in its own row
                    totals[t] = [x + y for x, y in zip(totals[t], (c, i, e, len(gt)))]
            cells.append(f"{wall:.1f} ({cpu:.1f}); first {first[t, photo.name]:.0f}; {score}")
            rows.append({"photo": photo.name, "tool": t, "wall_ms": wall, "cpu_ms": cpu,
                         "first_ms": first[t, photo.name], "boxes": b, "truth": gt})
        print(f"| {photo.name} | {'1 (no box)' if gt is None else len(gt)} | " + " | ".join(cells) + " |")
    multi = [ph.name for ph in photos if truth[ph.name]]
    means = {t: (statistics.mean(medians[t, n][0] for n in multi), statistics.mean(medians[t, n][1] for n in multi))
             for t in TOOLS}
    print(f"| **mean over the {len(multi)} ground-truth photos** | {totals['fer'][3]} | " + " | ".join(
        f"**{means[t][0]:.1f}** ({means[t][1]:.1f}); {totals[t][0]}/{totals[t][1]}, +{totals[t][2]}" for t in TOOLS) + " |")
    print(f"\nready (worker start to model loaded): ours {workers['ours'].about['ready_s']:.1f} s (both models), "
          f"fer {workers['fer'].about['ready_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"cold": {f"{t}|{n}": v for (t, n), v in cold_times.items()}, "warm": rows,
                                         "workers": {k: w.about for k, w in workers.items()}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
