"""The CSV of ``pipelines.predict`` (``ensemble-fer predict``): its columns and rows, and
:class:`Outputs`, which writes them -- row by row into ``FILE.partial``, resumable, swapped in
with the annotated and Grad-CAM pictures when every input is done (the rules:
``pipelines/predict.py``'s module doc and docs/RELIABILITY.md).

Columns: ``path, face, left, top, right, bottom, emotion``, one probability column per class,
``status`` and ``reason``, then ``frame, time_s, track`` when an input is a video.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import sys
from pathlib import Path

NO_FACE = "no_face"
OK, ERROR = "ok", "error"
BLANK = "blank"
"""Status of a near-blank face crop (all black, all white), flagged as extraction flags them."""
FIXED_COLUMNS = ("path", "face", "left", "top", "right", "bottom", "emotion")
STATUS_COLUMNS = ("status", "reason")
VIDEO_COLUMNS = ("frame", "time_s", "track")
"""Appended to every row of a run with a video input (empty in photo rows)."""
PARTIAL = ".partial"
"""Suffix of the outputs of a run still going (or interrupted): FILE.partial, DIR.partial."""
ANNOTATION_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet evaluate a cell (OWASP, CSV injection): such text cells get a leading '."""
RESUMED_KEYS = ("model_sha256", "tta", "detector", "upsample")
"""What --resume requires to be the same as in the run it continues (and ``fps`` with a video)."""


def text_cell(text) -> str:
    """A CSV cell of text: bytes of a file name that are not UTF-8 escaped (``\\xe9``), and a
    cell a spreadsheet would evaluate as a formula (starting with ``= + - @``, a tab or a
    carriage return) neutralised with a leading ``'`` (OWASP's rule for CSV injection)."""
    from ensemble_fer.features.datasets import name_text

    text = name_text(str(text))
    return "'" + text if text[:1] in FORMULA_STARTS else text


def path_cell(path) -> str:
    """The ``path`` column of an input (see :func:`text_cell`)."""
    return text_cell(os.fspath(path))


def run_record(recognizer, args) -> dict:
    """What decides an input's rows, recorded beside the CSV (``.FILE.run.json``) so that
    --resume continues only the same run: the model (the hash of its files), the options
    that change rows, and the working folders that relative input paths were given from."""
    return {"model": str(recognizer.source), "model_sha256": recognizer.fingerprint(), "tta": args.tta,
            "detector": args.detector, "upsample": recognizer.upsample, "fps": args.fps, "cwd": [os.getcwd()]}


def csv_rows(path, faces, classes) -> list[list]:
    """The CSV rows of one photo (see the module doc)."""
    if not faces:
        # emotion empty: no_face is a status, not an emotion (a column of emotions stays one)
        return [[path_cell(path), "", "", "", "", "", ""] + [""] * len(classes) + [NO_FACE, "no face found"]]
    return [[path_cell(path), k, *face.box, ""] + [""] * len(classes) + [BLANK, blank_reason()] if face.blank else
            [path_cell(path), k, *face.box, face.emotion] + [f"{face.scores[c]:.6f}" for c in classes] + [OK, ""]
            for k, face in enumerate(faces)]


def video_rows(path, frames, classes) -> list[list]:
    """CSV rows of one video's sampled frames, ``(frame, time_s, [VideoFace])`` each (see the
    module doc): a row per face (``blank`` for a blank crop), or one ``no_face`` row for a
    frame without one."""
    out = []
    for frame, time_s, rows in frames:
        if not rows:
            out.append([path_cell(path), "", "", "", "", "", ""] + [""] * len(classes)
                       + [NO_FACE, "no face in this frame", frame, f"{time_s:.3f}", ""])
        for face_in_frame, row in enumerate(rows):
            if row.face.blank:
                out.append([path_cell(path), face_in_frame, *row.box, ""] + [""] * len(classes)
                           + [BLANK, blank_reason(), row.frame, f"{row.time_s:.3f}", row.track])
                continue
            out.append([path_cell(path), face_in_frame, *row.box, row.emotion]
                       + [f"{row.face.scores[c]:.6f}" for c in classes]
                       + [OK, "", row.frame, f"{row.time_s:.3f}", row.track])
    return out


def blank_reason() -> str:
    return "the face crop is blank (almost no contrast), as extraction flags it: no expression to read"


def error_row(path, reason: str, classes) -> list:
    """The one row of an input that could not be read."""
    return [path_cell(path), "", "", "", "", "", ""] + [""] * len(classes) + [ERROR, text_cell(reason)]


def video_error_row(path, reason, classes) -> list:
    """The one row of a video that could not be read."""
    return error_row(path, reason, classes) + [""] * len(VIDEO_COLUMNS)


def csv_header(classes, video: bool = False) -> list[str]:
    """The columns; a run with a video input gets ``frame, time_s, track`` at the end
    (:func:`video_rows`), empty in photo rows."""
    return list(FIXED_COLUMNS) + list(classes) + list(STATUS_COLUMNS) + list(VIDEO_COLUMNS) * video


def format_csv(rows, classes, video: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_header(classes, video))
    writer.writerows(rows)
    return buffer.getvalue()


class Outputs:
    """Where a run's rows and pictures go, and how they replace or continue earlier ones.

    With a --csv FILE, rows are appended to ``FILE.partial`` (flushed after every input) and
    pictures written into ``DIR.partial``; when every input is done they replace FILE and
    DIR (an old DIR goes only once the new one is in place). Without --csv, rows go to
    stdout as they come.
    """

    def __init__(self, csv_path, annotate, gradcam, force: bool, resume: bool, video: bool = False):
        self.csv = None if csv_path is None else Path(csv_path)
        self.video = video
        self.dirs = {key: Path(d) for key, d in (("annotate", annotate), ("gradcam", gradcam)) if d is not None}
        self.force, self.resume = force, resume
        self.done: set[str] = set()
        self.pictures = bool(self.dirs)
        self.record: dict = {}
        """What produced the rows (:func:`run_record`), set before :meth:`open`."""
        self._cwds: list[str] = []

    @staticmethod
    def partial(path: Path) -> Path:
        return path.with_name(path.name + PARTIAL)

    @staticmethod
    def record_path(path: Path) -> Path:
        """Where the record of the run that wrote the CSV ``path`` lies (hidden, beside it)."""
        return path.with_name(f".{path.name}.run.json")

    def is_done(self, path) -> bool:
        """Whether ``path`` has its rows already: as given, absolute, or relative to a working
        folder of the run being continued (so ``photos/`` and ``/abs/photos/`` are one input)."""
        absolute = os.path.abspath(path)
        names = {path_cell(path), path_cell(absolute)}
        names.update(path_cell(os.path.relpath(absolute, cwd)) for cwd in self._cwds)
        return not names.isdisjoint(self.done)

    def check(self) -> None:
        """Refuse outputs that would be overwritten, or that are of the wrong kind."""
        from ensemble_fer import artifacts
        from ensemble_fer.errors import InputError

        if self.csv is not None and self.csv.is_dir():
            raise InputError(f"--csv {self.csv}: is a folder; give the path of the CSV file to write")
        for key, folder in self.dirs.items():
            if folder.exists() and not folder.is_dir():
                raise InputError(f"--{key} {folder}: is a file; give a folder for the pictures")
        for folder in self.dirs.values():
            # a user's own folder is never emptied: said first, so no refusal suggests --force for it
            artifacts.check_replaceable(folder)
        if self.force or self.resume:
            return
        # --resume continues a run that wrote a CSV (it is where the done inputs are read from)
        resume = "--resume" if self.csv is not None else "--resume (with --csv FILE)"
        for path in [self.csv] * (self.csv is not None) + list(self.dirs.values()):
            if self.partial(path).exists():
                raise InputError(f"{self.partial(path)}: holds what an interrupted run wrote; pass {resume} to "
                                 f"continue it or --force to start over")
            if path.exists():
                raise InputError(f"{path}: exists; pass --force to replace it, {resume} to add the inputs it "
                                 f"lacks, or choose another output")

    @contextlib.contextmanager
    def open(self, classes):
        """Lock the outputs, prepare FILE.partial and DIR.partial (fresh, or continued with
        --resume), yield self to write through, and swap the results in when the block ends
        without an exception."""
        from ensemble_fer import artifacts
        from ensemble_fer.errors import InputError

        header = self.header = csv_header(classes, self.video)
        finals = ([self.csv] if self.csv is not None else []) + list(self.dirs.values())
        with contextlib.ExitStack() as stack:
            for path in finals:
                stack.enter_context(artifacts.output_lock(path))
            # Decided under the lock: another run may have written the outputs since main's check.
            self.check()
            for folder in dict.fromkeys(path.parent for path in finals):
                artifacts.complete_interrupted_swaps(folder)     # a run killed while swapping in
            self.building = {key: self.partial(folder) for key, folder in self.dirs.items()}
            rows = self._start(header)
            if self.csv is None:
                handle = sys.stdout
            else:
                # unbuffered: a row is on disk once written, and a full disk fails that write
                # alone, with nothing left in a buffer to fail again on close
                with artifacts.reporting_disk_full(self.partial(self.csv)):
                    handle = stack.enter_context(open(self.partial(self.csv), "ab" if self.resume else "wb",
                                                      buffering=0))
            self._handle = handle
            self._rows_written = 0
            try:
                if rows is None:
                    self._emit([header])
                yield self
            except InputError:
                if self._rows_written == 0 and not self.resume:
                    self._discard()     # a full disk before any row: no empty FILE.partial left
                raise
            if self.csv is not None:
                handle.close()
            # every input is done: swap the new results in as one unit, pictures first, the
            # CSV (which says what is done) last, with the record of the run that wrote it
            built = {folder: self.building[key] for key, folder in self.dirs.items()}
            if self.csv is not None:
                built[self.record_path(self.csv)] = self.record_path(self.partial(self.csv))
                built[self.csv] = self.partial(self.csv)
            if built:
                artifacts.swap_in_together(built)

    def _emit(self, rows) -> None:
        from ensemble_fer import artifacts

        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        if self.csv is None:
            self._handle.write(buffer.getvalue())
            self._handle.flush()
            return
        data = memoryview(buffer.getvalue().encode())
        with artifacts.reporting_disk_full(self.partial(self.csv)):
            while data:
                data = data[self._handle.write(data):]

    def _discard(self) -> None:
        """Remove what a fresh start made (FILE.partial, its record, DIR.partial)."""
        scratch = [*self.building.values()]
        if self.csv is not None:
            scratch += [self.partial(self.csv), self.record_path(self.partial(self.csv))]
        for path in scratch:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _start(self, header) -> list | None:
        """Prepare FILE.partial and DIR.partial; the rows kept from before (None: a fresh start)."""
        from ensemble_fer import artifacts

        partial = None if self.csv is None else self.partial(self.csv)
        if not self.resume:
            # A fresh start (--force, or nothing there): an interrupted run's scratch is
            # discarded; finished outputs stay until this run's replace them.
            for path in [partial, *self.building.values()]:
                if path is not None and path.is_dir():
                    shutil.rmtree(path)
                elif path is not None and path.exists():
                    path.unlink()
            for folder in self.building.values():
                folder.mkdir(parents=True)
            if partial is not None:
                self._cwds = list(self.record.get("cwd", []))
                artifacts.write_json(self.record_path(partial), self.record)
            return None
        source = partial if partial.exists() else self.csv if self.csv.exists() else None
        if source is not None:
            self._check_record(source)
        rows = [] if source is None else self._kept_rows(source, header)
        self._cwds = list(dict.fromkeys(self._cwds + list(self.record.get("cwd", []))))
        artifacts.write_json(self.record_path(partial), {**self.record, "cwd": self._cwds})
        # The rows kept go into a fresh FILE.partial (atomically); the rest is appended to it.
        with artifacts.atomic_path(partial) as tmp:
            tmp.write_text(format_csv(rows, header[len(FIXED_COLUMNS):header.index(STATUS_COLUMNS[0])], self.video),
                           newline="")
        for key, folder in self.dirs.items():
            building = self.building[key]
            if not building.exists():
                if folder.is_dir():     # continue a finished folder: links, not copies, of its files
                    shutil.copytree(folder, building, copy_function=_link_or_copy)
                else:
                    building.mkdir(parents=True)
        self.done = {row[0] for row in rows}
        return rows

    def _check_record(self, source: Path) -> None:
        """Refuse to continue ``source`` unless the run that wrote it used this model and these
        options (its record, :func:`run_record`); keeps its working folders for :meth:`is_done`."""
        from ensemble_fer import artifacts
        from ensemble_fer.errors import InputError

        path = self.record_path(source)
        if not path.is_file():
            raise InputError(f"{source}: has no record of the run that wrote it ({path.name}: written by an older "
                             f"predict, or copied without it), so --resume cannot check it continues the same model "
                             f"and options; pass --force to start over")
        old = artifacts.read_json(path)
        if not isinstance(old, dict) or not isinstance(old.get("cwd", []), list):
            raise InputError(f"{path}: not a run record (a JSON object); pass --force to start over")
        keys = RESUMED_KEYS + ("fps",) * self.video
        changed = [key for key in keys if old.get(key) != self.record.get(key)]
        if changed:
            said = [f"model {old.get('model')} then, {self.record.get('model')} now (their files differ)"
                    if key == "model_sha256" else f"--{key} {old.get(key)} then, {self.record.get(key)} now"
                    for key in changed]
            raise InputError(f"{source}: written by another run ({'; '.join(said)}); resume with the same --model "
                             f"and options, or pass --force to start over")
        self._cwds = [str(cwd) for cwd in old.get("cwd", [])]

    def _kept_rows(self, source: Path, header) -> list[list[str]]:
        """The rows of ``source`` for files that are done: ``ok``, ``no_face`` or ``blank`` rows. The last
        file's rows are dropped (an interruption may have cut them short), and so is every
        file with an ``error`` row or a malformed one: those are done again."""
        from ensemble_fer.errors import InputError

        try:
            with open(source, newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))
        except UnicodeDecodeError as exc:
            raise InputError(f"{source}: not UTF-8 text (byte {exc.start}: {exc.reason}), so not a CSV this predict "
                             f"wrote; pass --force to start over") from None
        except csv.Error as exc:
            raise InputError(f"{source}: not a readable CSV ({exc}); pass --force to start over") from None
        if not rows or rows[0] != header:
            raise InputError(f"{source}: its columns {rows[0] if rows else []} are not this model's {header}; "
                             f"resume with the model that wrote it, or pass --force to start over")
        rows = rows[1:]
        status = header.index("status")
        bad = {row[0] for row in rows if len(row) != len(header) or row[status] not in (OK, NO_FACE, BLANK)}
        if source.name.endswith(PARTIAL) and rows:
            bad.add(rows[-1][0])
        return [row for row in rows if row[0] not in bad]

    def write(self, path, rows) -> None:
        """The rows of one input, flushed so that an interruption keeps them."""
        # photo rows in a run with videos: empty frame, time_s, track
        self._emit([row + [""] * (len(self.header) - len(row)) for row in rows])
        self._rows_written += len(rows)
        self.done.add(path_cell(path))

    def write_pictures(self, recognizer, image, faces, name: Path) -> None:
        write_pictures(recognizer, image, faces, name, self.building.get("annotate"), self.building.get("gradcam"))


def _link_or_copy(source, target):
    """Pictures are written through atomic renames, never in place, so a hard link to a
    finished folder's file is as safe as a copy and costs nothing."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_pictures(recognizer, image, faces, name: Path, annotate_dir, gradcam_dir) -> None:
    from ensemble_fer.inference import annotate
    if annotate_dir:
        suffix = name.suffix.lower() if name.suffix.lower() in ANNOTATION_SUFFIXES else ".png"
        annotate.write_image(Path(annotate_dir) / name.with_suffix(suffix), annotate.draw_faces(image, faces))
    if gradcam_dir:
        for k, face in enumerate(faces):
            figure = annotate.gradcam_figure(recognizer.face_crop(image, face), recognizer.grad_cam(image, face),
                                             gradcam_caption(recognizer, face))
            out = Path(gradcam_dir) / name.parent / f"{name.stem}_face{k}_{face.emotion}.png"
            annotate.write_image(out, figure)


def gradcam_caption(recognizer, face) -> str:
    emotion, score = face.top_emotion
    n = len(recognizer.gradcam_models())
    return f"{emotion} {score:.2f} | Grad-CAM of {n} member{'s' * (n != 1)}, weighted"
