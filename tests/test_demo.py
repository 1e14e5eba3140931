"""pipelines.demo end to end on the bundled sample, as cheap as it goes (one epoch, no detector
during extraction), then a rerun that must reuse every finished step."""

import json

import pytest

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
