"""pipelines.demo end to end on the bundled sample, as cheap as it goes (one epoch, no detector
during extraction), then a rerun that must reuse every finished step."""

import json

import pytest

from conftest import occupied_output
from pipelines import demo


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reruns_from_its_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["--out", str(out), "--epochs", "1", "--detector", "none", "--quiet"]
    assert demo.main(args) == 0
    stdout = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in stdout

    for name in ("report.md", "report.json", "evaluation.md", "evaluation.json", "confusion_matrix.png",
                 "models/ensemble.json", "models/ensemble_report.md", "models/cnn5/model.keras",
                 "models/cnn5+bovw/model.keras"):
        assert (out / name).is_file(), name
    markdown = (out / "report.md").read_text()
    for text in ("## Members and ensemble (val)", "| cnn5 |", "| cnn5+bovw |", "| equal-weight |",
                 "| **ensemble** |", "Learnt weights", "Cross-validated", "Per class (ensemble, whole val split)",
                 "no test split", "face-found subset", "![Confusion matrix, whole val split](confusion_matrix.png)"):
        assert text in markdown, text

    report = json.loads((out / "report.json").read_text())
    assert set(report["variants"]) == {"cnn5", "cnn5+bovw"}
    assert sum(report["ensemble"]["weights"].values()) == pytest.approx(1.0)
    assert report["evaluation"]["split"] == "val" and report["evaluation"]["all"]["n"] == 105
    # the evaluation re-extracts val from the raw images: it must agree with the fit-time features
    assert report["consistency"]["same"] is True
    assert not any(report["reused"].values())

    assert demo.main(args) == 0
    rerun = json.loads((out / "report.json").read_text())
    assert all(rerun["reused"].values())
    assert rerun["ensemble"]["weights"] == report["ensemble"]["weights"]
    assert "reused" in (out / "report.md").read_text()


@pytest.mark.parametrize("kind", ["file", "user folder", "inside the sample"])
def test_demo_out_must_be_its_own_folder(kind, tmp_path, capsys):
    """The demo wrote report.md, models/ and features/ into any folder; now a file, a user's
    folder and a folder inside the bundled sample are refused before any work, --force or not."""
    from ensemble_fer import paths

    out = (paths.sample_data() / "demo" if kind == "inside the sample"
           else occupied_output(tmp_path / "mine", kind, user_file="report.md"))
    for flags in ([], ["--force"]):
        assert demo.main(["--out", str(out), "--detector", "none", "--quiet", *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(out) in err
    if kind == "user folder":
        assert [p.name for p in out.iterdir()] == ["report.md"] and (out / "report.md").read_text() == "mine"
    elif kind == "inside the sample":
        assert not out.exists()
