"""Video prediction speed on a 640x480 video: sampled frames per second, end to end.

    python benchmarks/bench_video.py [--model PATH] [--seconds 8] [--fps 4 25] [--upsample auto]

The video (MPEG-4, 25 fps, 640x480) is written by the benchmark from the bundled photos
(2008_002470: 6 faces, 2008_007676: 7 faces, 2009_004587: 2 faces, each for a third of the
time, drifting 2 px per frame). ``ensemble_fer.inference.video.predict_video`` runs over it at each
``--fps`` (25 = every frame): decode, gray, HOG face detection (``--upsample``, default auto as predict), crops, BOVW
features, the networks (faces batched across frames), tracking. Reported: sampled frames
per second and faces per second of processing, and decoding alone for reference. Without
``--model``, the shipped release.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "tests" / "data" / "photos"


def write_video(path: Path, seconds: float, fps: int = 25) -> Path:
    import cv2
    import numpy as np

    from ensemble_fer.features.image_io import read_image_file

    names = ("2008_002470.jpg", "2008_007676.jpg", "2009_004587.jpg")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (640, 480))
    per_photo = int(seconds * fps / len(names))
    for name in names:
        image = read_image_file(PHOTOS / name)[..., :3]
        canvas = np.zeros((480, 640, 3), np.uint8)
        canvas[:min(480, image.shape[0]), :min(640, image.shape[1])] = image[:480, :640]
        for k in range(per_photo):
            writer.write(cv2.cvtColor(np.roll(canvas, 2 * k, axis=1), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def main(argv=None) -> int:
    from ensemble_fer.features.faces import parse_upsample

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--fps", type=float, nargs="+", default=[4.0, 25.0])
    p.add_argument("--upsample", type=parse_upsample, default="auto")
    args = p.parse_args(argv)

    from ensemble_fer import tf_startup

    tf_startup.start_quietly()
    from ensemble_fer import EmotionRecognizer
    from ensemble_fer.inference import video
    work = Path(tempfile.mkdtemp(prefix="bench_video_"))
    clip = write_video(work / "clip.mp4", args.seconds)
    if args.model is None:
        from ensemble_fer.release import default_model

        args.model = default_model()
    recognizer = EmotionRecognizer.load(args.model, upsample=args.upsample)
    recognizer.predict(PHOTOS / "2008_002470.jpg")          # warm-up: models loaded, graphs traced

    started = time.perf_counter()
    decoded = sum(1 for _ in video.read_frames(clip, fps=25))
    decode_s = time.perf_counter() - started
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; model {args.model}; "
          f"video 640x480, {args.seconds:g} s at 25 fps; upsample {args.upsample}")
    print(f"decoding alone: {decoded / decode_s:.0f} frames/s")
    # CPU seconds of this process (all its threads) beside wall time: on a shared machine the
    # wall time says how busy the others were, the CPU time what the work costs.
    print("| sampled fps | frames | faces | wall s | frames/s | faces/s | x real time | CPU s per frame |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for fps in args.fps:
        cpu = time.process_time()
        started = time.perf_counter()
        frames = faces = 0
        for _, _, _, rows in video.iter_video_frames(recognizer, clip, fps):
            frames += 1
            faces += len(rows)
        took = time.perf_counter() - started
        cpu = time.process_time() - cpu
        print(f"| {fps:g} | {frames} | {faces} | {took:.1f} | {frames / took:.2f} | {faces / took:.1f} "
              f"| {args.seconds / took:.2f} | {cpu / frames:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
