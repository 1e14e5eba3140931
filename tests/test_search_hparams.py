"""`python -m pipelines.search_hparams` (ensemble_fer.training.hparam_search) with real one-epoch BOVW-only runs
on the sample store: the ranked table, skipping and resuming on reruns, failed runs, and every refusal."""

import csv
import functools
import json
import shutil

import pytest

from conftest import occupied_output
from ensemble_fer.training import hparam_search, train as training
from ensemble_fer.errors import InputError
from pipelines import search_hparams

GRID = {"lr": [0.001, 0.01], "epochs": [1], "augment": [False]}        # 2 x 1 x 1: two runs


def _grid_file(path, grid):
    path.write_text(json.dumps(grid))
    return path


def _cli(args, capsys):
    code = search_hparams.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _base(store, out, grid_file):
    return ["--block", "none", "--bovw", "--features", store, "--grid", grid_file, "--out", out, "--quiet"]


def _table(out):
    with open(out / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def searched(sample_store, tmp_path_factory):
    """The 2-run search, made once: (search folder, grid file, stdout of the first call)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("search")
    grid = _grid_file(root / "grid.json", GRID)
    out = root / "bovw"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = search_hparams.main([str(a) for a in _base(sample_store, out, grid)])
    assert code == 0
    return out, grid, stdout.getvalue()


def test_two_runs_are_trained_and_ranked_by_val_accuracy(searched):
    out, _, stdout = searched
    record = json.loads((out / "search.json").read_text())
    assert record["variant"] == "bovw" and record["labels"] == "fer7" and record["block"] is None
    # ParameterGrid order (keys sorted, the last one fastest): lr 0.001 first
    assert {name: entry["params"] for name, entry in record["runs"].items()} == {
        "run-000": {"augment": False, "epochs": 1, "lr": 0.001},
        "run-001": {"augment": False, "epochs": 1, "lr": 0.01}}
    for name, entry in record["runs"].items():
        config = json.loads((out / name / "config.json").read_text())
        assert config["args"]["lr"] == entry["params"]["lr"] and config["args"]["augment"] is False
        assert config["training"]["complete"] and config["training"]["epochs_run"] == 1
        assert entry["status"] == "finished"

    rows = _table(out)
    assert [r["rank"] for r in rows] == ["1", "2"] and {r["run"] for r in rows} == {"run-000", "run-001"}
    assert float(rows[0]["val_accuracy"]) >= float(rows[1]["val_accuracy"])
    for row in rows:
        folder = out / row["run"]
        val = json.loads((folder / "metrics.json").read_text())["val"]
        config = json.loads((folder / "config.json").read_text())
        assert float(row["val_accuracy"]) == pytest.approx(val["accuracy"], abs=1e-6)
        assert float(row["val_macro_f1"]) == pytest.approx(val["macro_f1"], abs=1e-6)
        assert float(row["val_loss"]) == pytest.approx(val["log_loss"], rel=1e-5)
        assert row["epochs_run"] == "1" and row["kept_epoch"] == str(config["training"]["kept_epoch"]) == "1"
        assert float(row["train_seconds"]) == pytest.approx(
            config["training"]["training_seconds"], rel=1e-5)
        assert float(row["lr"]) == record["runs"][row["run"]]["params"]["lr"]
        assert row["status"] == "finished" and row["error"] == ""
    assert record["best"]["run"] == rows[0]["run"]

    markdown = (out / "results.md").read_text()
    assert "| rank | run | augment | epochs | lr | val acc | val macro-F1 | val loss |" in markdown
    assert markdown.index(f"`{rows[0]['run']}`") < markdown.index(f"`{rows[1]['run']}`")
    assert "optimistic" in markdown
    assert "finished" in stdout and "run-000" in stdout and "results.csv" in stdout


def test_rerun_skips_finished_runs_whatever_the_grid_order(searched, sample_store, tmp_path, capsys):
    out, _, _ = searched
    table = (out / "results.csv").read_bytes()
    models = {p: p.stat().st_mtime_ns for p in out.glob("run-*/model.keras")}
    assert len(models) == 2
    # the same combinations, listed in another order: the same folders, nothing trained
    reordered = _grid_file(tmp_path / "grid.json", {"augment": [False], "lr": [0.01, 0.001], "epochs": [1]})
    args = _base(sample_store, out, reordered)
    args.remove("--quiet")
    code, stdout, stderr = _cli(args, capsys)
    assert code == 0, stderr
    assert stdout.count("finished, skipped") == 2 and "training" not in stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("run-*/model.keras")} == models
    assert (out / "results.csv").read_bytes() == table
    assert sorted(json.loads((out / "search.json").read_text())["runs"]) == ["run-000", "run-001"]


def test_a_run_cut_short_by_its_time_budget_resumes(sample_store, tmp_path):
    out = tmp_path / "search"
    grid = {"epochs": [2], "augment": [False]}
    # A budget of 0.06 s: the run stops after its first epoch (the budget is checked after each).
    first = hparam_search.HparamSearch(None, True, grid, max_minutes_per_run=0.001, progress=False)
    first.fit(sample_store, out)
    [row] = first.results_
    assert row["run"] == "run-000" and row["epochs_run"] == 1 and row["status"].startswith("incomplete")
    assert not json.loads((out / "run-000" / "config.json").read_text())["training"]["complete"]
    history = (out / "run-000" / "history.csv").read_text().splitlines()
    assert len(history) == 2                                         # header + epoch 1
    # how a rerun reads the folder: outputs cut short -> resume; killed before any outputs
    # (a checkpoint only) -> resume as well
    config = out / "run-000" / "config.json"
    assert hparam_search.run_state(out / "run-000") == "incomplete"
    config.rename(config.with_suffix(".bak"))
    assert hparam_search.run_state(out / "run-000") == "resumable"
    config.with_suffix(".bak").rename(config)

    second = hparam_search.HparamSearch(None, True, grid, progress=False).fit(sample_store, out)
    [row] = second.results_
    assert row["status"] == "finished" and row["epochs_run"] == 2 and row["rank"] == 1
    resumed = (out / "run-000" / "history.csv").read_text().splitlines()
    assert len(resumed) == 3 and resumed[:2] == history              # epoch 1 kept: resumed, not restarted
    assert second.best_run_ == out / "run-000" and second.best_params_ == {"augment": False, "epochs": 2}
    # a checkpoint marked complete whose outputs are gone: train_variant(resume=True) would
    # return without writing them, so the search starts that run over
    config.unlink()
    assert hparam_search.run_state(out / "run-000") == "stale"


def test_a_failing_run_is_recorded_and_skipped_on_rerun(sample_store, tmp_path, capsys):
    # lr=10 with SGD passes train_variant's argument check (lr <= 10), but training diverges:
    # the network's probabilities become NaN, which training reports as an InputError naming lr.
    out = tmp_path / "search"
    grid = _grid_file(tmp_path / "grid.json", {"lr": [10.0], "scratch_optimizer": ["sgd"], "epochs": [1],
                                                "augment": [False]})
    code, stdout, stderr = _cli(_base(sample_store, out, grid), capsys)
    assert code == 1
    assert (f"run {out / 'run-000'} failed: InputError: lr: training diverged with lr=10.0: the val "
            f"probabilities of row 0 are NaN or inf; train with a smaller learning rate") in stderr
    [row] = _table(out)
    assert row["rank"] == "" and row["status"] == "failed" and "training diverged" in row["error"]
    assert "failed: InputError: lr: training diverged" in (out / "results.md").read_text()

    args = _base(sample_store, out, grid)
    args.remove("--quiet")
    code, stdout, _ = _cli(args, capsys)
    assert code == 1 and "failed before" in stdout and ": training\n" not in stdout
    code, stdout, _ = _cli(args + ["--retry-failed"], capsys)
    assert code == 1 and "run-000 {" in stdout and ": training" in stdout


@pytest.mark.parametrize("grid, message", [
    ({"lr": [0.001], "learning_rate": [0.1]}, "unknown parameter ['learning_rate']; allowed: ["),
    ({"block": ["cnn5"]}, "unknown parameter ['block'] (block: fixed for a whole search"),
    ({"lr": 0.001}, "'lr' must be a non-empty list of values; got 0.001"),
    ({"lr": []}, "'lr' must be a non-empty list of values"),
    ([], "a grid must be a JSON object"),
    ({"lr": [0.001, -1]}, "lr must be a number in (0.0, 10.0]; received -1 (in the combination {\"lr\": -1})"),
    ({"image_size": [64]}, "image_size: only meaningful with an image block"),
])
def test_bad_grids_are_refused_before_any_run(grid, message, sample_store, tmp_path, capsys):
    grid_file = _grid_file(tmp_path / "grid.json", grid)
    out = tmp_path / "search"
    code, _, stderr = _cli(_base(sample_store, out, grid_file), capsys)
    assert code == 2
    assert stderr.startswith(f"error: {grid_file}: ") and message in stderr and stderr.count("\n") == 1
    assert not out.exists()


def test_unknown_key_error_lists_every_allowed_parameter(sample_store, tmp_path, capsys):
    grid_file = _grid_file(tmp_path / "grid.json", {"learning_rate": [0.1]})
    code, _, stderr = _cli(_base(sample_store, tmp_path / "s", grid_file), capsys)
    assert code == 2
    allowed = hparam_search.searchable_parameters()
    for name in ("lr", "batch_size", "dropout", "epochs", "patience", "lr_patience", "label_smoothing",
                 "class_weight"):
        assert name in allowed and repr(name) in stderr
    assert not set(allowed) & set(hparam_search.NOT_SEARCHABLE)


def test_a_search_folder_belongs_to_one_search(searched, sample_store, tmp_path, capsys):
    out, grid, _ = searched
    before = (out / "search.json").read_bytes()
    code, _, stderr = _cli(_base(sample_store, out, grid) + ["--labels", "valence3"], capsys)
    assert code == 2 and f"error: out: {out} holds another search (labels was 'fer7', now 'valence3')" in stderr
    code, _, stderr = _cli(["--block", "cnn5", "--bovw", "--features", sample_store, "--grid", grid,
                            "--out", out, "--quiet"], capsys)
    assert code == 2 and "variant was 'bovw', now 'cnn5+bovw'" in stderr
    assert (out / "search.json").read_bytes() == before

    code, _, stderr = _cli(_base(sample_store, out, tmp_path / "missing.json"), capsys)
    assert code == 2 and f"{tmp_path / 'missing.json'}: grid file not found" in stderr


def test_grid_values_are_normalised_like_train_variant_does():
    search = hparam_search.HparamSearch(None, True, [{"class_weight": [None, "none", "balanced"], "lr": [1e-3]},
                                                     {"lr": [0.001], "class_weight": ["none"]}])
    assert search.plan()[1] == [{"class_weight": "none", "lr": 0.001}, {"class_weight": "balanced", "lr": 0.001}]


def test_a_run_folder_that_does_not_match_its_parameters_is_refused(searched, sample_store, tmp_path, capsys):
    out, grid, _ = searched
    copy = tmp_path / "search"
    shutil.copytree(out, copy)
    (copy / "run-000").rename(copy / "swap")
    (copy / "run-001").rename(copy / "run-000")
    (copy / "swap").rename(copy / "run-001")
    code, _, stderr = _cli(_base(sample_store, copy, grid), capsys)
    assert code == 2 and stderr.startswith(f"error: {copy / 'run-000'}: trained with other arguments than search.json")
    assert "lr is 0.01, search.json says 0.001" in stderr


@pytest.mark.parametrize("bug", [KeyError("phase"), RuntimeError("shape mismatch"),
                                 ValueError("operands could not be broadcast together")])
def test_a_bug_in_a_run_stops_the_search_with_its_traceback(bug, sample_store, tmp_path, monkeypatch, capsys):
    # Only InputError fails one run; anything else is a bug, not a "failed" row (issue 13, item 14).
    @functools.wraps(training.train_variant)         # keeps the signature the grid is checked against
    def buggy(*args, **kwargs):
        raise bug

    monkeypatch.setattr(training, "train_variant", buggy)
    out = tmp_path / "search"
    grid = _grid_file(tmp_path / "grid.json", {"epochs": [1]})
    with pytest.raises(type(bug)) as info:
        search_hparams.main([str(a) for a in _base(sample_store, out, grid)])
    assert info.value is bug
    assert "error:" not in capsys.readouterr().err
    entry = json.loads((out / "search.json").read_text())["runs"]["run-000"]
    assert entry["status"] == "interrupted" and entry["error"] is None
    [row] = _table(out)
    assert row["status"] == "pending" and row["error"] == ""


def test_an_input_error_of_a_run_is_recorded_as_failed(sample_store, tmp_path, monkeypatch, capsys):
    @functools.wraps(training.train_variant)
    def refused(*args, **kwargs):
        raise InputError("lr: training diverged with lr=10.0")

    monkeypatch.setattr(training, "train_variant", refused)
    out = tmp_path / "search"
    code, _, stderr = _cli(_base(sample_store, out, _grid_file(tmp_path / "grid.json", {"epochs": [1]})), capsys)
    assert code == 1 and f"run {out / 'run-000'} failed: InputError: lr: training diverged with lr=10.0" in stderr
    [row] = _table(out)
    assert row["status"] == "failed" and row["error"] == "InputError: lr: training diverged with lr=10.0"


def test_out_must_be_a_search_folder_apart_from_the_store(sample_store, tmp_path, capsys):
    """--out inside the feature store failed every run (exit 1) after writing into the store;
    a user's folder got results.csv and run folders. Both are now refused up front (exit 2),
    and a folder being searched is locked against a second search."""
    from ensemble_fer import artifacts

    grid = _grid_file(tmp_path / "grid.json", GRID)
    before = sorted(p.name for p in sample_store.iterdir())
    code, _, stderr = _cli(_base(sample_store, sample_store / "search", grid), capsys)
    assert code == 2 and "lies inside --features" in stderr and stderr.count("\n") == 1
    assert sorted(p.name for p in sample_store.iterdir()) == before

    mine = occupied_output(tmp_path / "mine", "user folder")
    code, _, stderr = _cli(_base(sample_store, mine, grid), capsys)
    assert code == 2 and f"out: {mine} holds files and is not a search folder (no search.json)" in stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

    busy = tmp_path / "busy"
    with artifacts.output_lock(busy):
        code, _, stderr = _cli(_base(sample_store, busy, grid), capsys)
    assert code == 2 and "busy" in stderr and not (busy / "search.json").exists()
