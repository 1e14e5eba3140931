import json
import math

import numpy as np
import pytest
from sklearn.metrics import log_loss as sklearn_log_loss

from ensemble_fer.metrics import (classification_metrics, format_report_markdown,
                                  plot_confusion_matrix, plot_training_curves, read_history_csv, shared_errors)

NAMES = ["a", "b", "c"]
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 2])
PROBA = np.array([
    [0.7, 0.2, 0.1],  # true a, predicted a
    [0.5, 0.3, 0.2],  # true a, predicted a
    [0.3, 0.6, 0.1],  # true a, predicted b
    [0.1, 0.8, 0.1],  # true b, predicted b
    [0.1, 0.4, 0.5],  # true b, predicted c
    [0.0, 0.0, 1.0],  # true c, predicted c
])


def test_metrics_match_hand_computed_values():
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["classes"] == NAMES
    # a: P 2/2, R 2/3, F1 0.8; b: P 1/2, R 1/2, F1 0.5; c: P 1/2, R 1, F1 2/3
    expected = {"a": (1.0, 2 / 3, 0.8, 3), "b": (0.5, 0.5, 0.5, 2), "c": (0.5, 1.0, 2 / 3, 1)}
    for name, (precision, recall, f1, support) in expected.items():
        scores = m["per_class"][name]
        assert scores["precision"] == pytest.approx(precision)
        assert scores["recall"] == pytest.approx(recall)
        assert scores["f1"] == pytest.approx(f1)
        assert scores["support"] == support
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert m["log_loss"] is None
    json.dumps(m)  # JSON-able as it is


def test_probabilities_give_the_same_metrics_plus_log_loss():
    from_pred = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    from_proba = classification_metrics(Y_TRUE, PROBA, NAMES)
    expected = -(math.log(0.7) + math.log(0.5) + math.log(0.3) + math.log(0.8)
                 + math.log(0.4) + math.log(1.0)) / 6
    assert from_proba["log_loss"] == pytest.approx(expected)
    assert from_proba["log_loss"] == pytest.approx(sklearn_log_loss(Y_TRUE, PROBA, labels=[0, 1, 2]))
    assert {k: v for k, v in from_proba.items() if k != "log_loss"} == \
        {k: v for k, v in from_pred.items() if k != "log_loss"}


def test_log_loss_is_clipped():
    proba = np.array([[1.0, 0.0], [0.0, 1.0]])
    m = classification_metrics([1, 1], proba, ["x", "y"])  # first row: p(true) = 0
    assert math.isfinite(m["log_loss"])
    assert m["log_loss"] == pytest.approx(-math.log(1e-15) / 2)


def test_absent_classes_keep_their_place():
    names = ["a", "b", "c", "d"]
    m = classification_metrics([0, 0, 1, 1], [0, 2, 1, 1], names)  # c predicted, never true; d absent
    assert np.array(m["confusion_matrix"]).shape == (4, 4)
    assert m["confusion_matrix"][2] == [0, 0, 0, 0] and m["confusion_matrix"][3] == [0, 0, 0, 0]
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert list(m["per_class"]) == names
    # macro-F1 averages over the classes the data holds (a and b), not the whole label set
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert m["accuracy"] == pytest.approx(0.75)


def test_bad_inputs_are_rejected():
    bad = PROBA.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="row 3 holds NaN"):
        classification_metrics(Y_TRUE, bad, NAMES)
    with pytest.raises(ValueError, match="empty"):
        classification_metrics([], [], NAMES)
    with pytest.raises(ValueError, match="empty"):
        classification_metrics([], np.zeros((0, 3)), NAMES)
    with pytest.raises(ValueError, match="3 columns but class_names names 4"):
        classification_metrics(Y_TRUE, PROBA, NAMES + ["d"])
    with pytest.raises(ValueError, match=r"y_true must hold class indices in \[0, 3\); got 3"):
        classification_metrics([0, 1, 3, 1, 1, 2], PROBA, NAMES)
    with pytest.raises(ValueError, match="6 samples but y_true has 5"):
        classification_metrics(Y_TRUE[:5], Y_PRED, NAMES)
    with pytest.raises(ValueError, match="rows must sum to 1"):
        classification_metrics(Y_TRUE, PROBA * 0.5, NAMES)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        classification_metrics(Y_TRUE, np.log(PROBA + 1e-3), NAMES)


def _assert_png(path):
    assert path.is_file()
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_matrix_figure_is_written(tmp_path, normalize):
    cm = classification_metrics(Y_TRUE, Y_PRED, NAMES)["confusion_matrix"]
    path = plot_confusion_matrix(cm, NAMES, tmp_path / "figs" / "cm.png", "test", normalize=normalize)
    _assert_png(path)
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        plot_confusion_matrix(cm, NAMES[:2], tmp_path / "bad.png", "bad")
    assert not (tmp_path / "bad.png").exists()


def test_training_curves_from_dict(tmp_path):
    history = {"loss": [1.2, 0.9, 0.8], "val_loss": [1.3, 1.0, 0.95],
               "accuracy": [0.4, 0.5, 0.6], "val_accuracy": [0.35, 0.45, 0.5]}
    _assert_png(plot_training_curves(history, tmp_path / "curves.png"))
    with pytest.raises(ValueError, match="at least one of 'loss'"):
        plot_training_curves({"lr": [0.1]}, tmp_path / "none.png")
    with pytest.raises(ValueError, match="one value per epoch"):
        plot_training_curves({"loss": [1.0, 0.9], "val_loss": [1.0]}, tmp_path / "ragged.png")


def test_training_curves_from_csvlogger_with_phases(tmp_path):
    csv_path = tmp_path / "history.csv"
    lines = ["epoch,accuracy,loss,val_accuracy,val_loss,learning_rate,phase"]
    for phase, epochs in (("frozen", 4), ("finetune", 3)):
        for epoch in range(epochs):  # the epoch column restarts with each phase
            lines.append(f"{epoch},{0.3 + 0.05 * epoch},{1.5 - 0.1 * epoch},"
                         f"{0.28 + 0.04 * epoch},{1.6 - 0.08 * epoch},0.001,{phase}")
    csv_path.write_text("\n".join(lines) + "\n")
    history = read_history_csv(csv_path)
    assert history["phase"] == ["frozen"] * 4 + ["finetune"] * 3
    assert history["loss"][0] == pytest.approx(1.5)
    _assert_png(plot_training_curves(csv_path, tmp_path / "curves.png", title="variant"))


def test_markdown_report():
    val = classification_metrics(Y_TRUE, PROBA, NAMES)
    test = classification_metrics(Y_TRUE, Y_PRED[::-1], NAMES)
    text = format_report_markdown({
        "member|1": {"val": val, "test": test},
        "equal-weight": {"val": val},
        "ensemble": {"val": val, "test": test},
    }, title="Ensemble")
    lines = text.splitlines()
    assert lines[0] == "# Ensemble"
    assert "| model | val accuracy | val macro-F1 | test accuracy | test macro-F1 |" in lines
    assert f"| member\\|1 | 0.6667 | {val['macro_f1']:.4f} | {test['accuracy']:.4f} | " \
           f"{test['macro_f1']:.4f} |" in lines
    assert f"| equal-weight | 0.6667 | {val['macro_f1']:.4f} | - | - |" in lines
    assert "Per class: ensemble, test (n = 6)" in text
    per_class = test["per_class"]["a"]
    assert (f"| a | {per_class['precision']:.4f} | {per_class['recall']:.4f} | "
            f"{per_class['f1']:.4f} | 3 |") in lines
    # a bare metrics dict counts as the val split; the detail row can be chosen
    short = format_report_markdown({"m": val}, detail_model="m", digits=2)
    assert "| m | 0.67 |" in short and "Per class: m, val" in short
    with pytest.raises(ValueError, match="detail_model must be one of"):
        format_report_markdown({"m": val}, detail_model="x")
    with pytest.raises(ValueError, match="at least one model"):
        format_report_markdown({})


def test_a_bad_history_file_is_an_input_error_naming_it_and_bad_arrays_are_not(tmp_path):
    """What comes from a file the user has is InputError (one line at the command line); bad
    arrays or mappings from the caller stay plain ValueError, a bug with its traceback."""
    from ensemble_fer.errors import InputError, MissingInputError

    with pytest.raises(MissingInputError, match="history.csv: file not found"):
        read_history_csv(tmp_path / "history.csv")
    (tmp_path / "empty.csv").write_text("epoch,loss\n")
    with pytest.raises(InputError, match="empty.csv: no epochs in the training history"):
        read_history_csv(tmp_path / "empty.csv")
    (tmp_path / "lr.csv").write_text("epoch,learning_rate\n0,0.1\n")
    with pytest.raises(InputError, match=r"lr.csv: history must hold at least one of 'loss'"):
        plot_training_curves(tmp_path / "lr.csv", tmp_path / "curves.png")
    (tmp_path / "binary.csv").write_bytes(b"epoch,loss\n\xff\xfe\x00\x01\n")
    with pytest.raises(InputError, match="binary.csv: not a readable training-history CSV"):
        read_history_csv(tmp_path / "binary.csv")

    for call in (lambda: plot_training_curves({"lr": [0.1]}, tmp_path / "none.png"),
                 lambda: classification_metrics(Y_TRUE, PROBA * np.nan, NAMES),
                 lambda: format_report_markdown({})):
        with pytest.raises(ValueError) as err:
            call()
        assert not isinstance(err.value, InputError), err.value
    assert not list(tmp_path.glob("*.png"))


def test_a_one_epoch_history_is_drawn_without_a_collapsed_layout(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")      # matplotlib warns when constrained layout collapses the axes
        _assert_png(plot_training_curves({"phase": ["scratch"], "loss": [2.0], "val_loss": [1.9],
                                          "accuracy": [0.1], "val_accuracy": [0.2]}, tmp_path / "one.png"))


def _one_hot(pred, n_classes=3):
    return np.eye(n_classes)[np.asarray(pred)]


def test_shared_errors_counts_pairs_of_members():
    y = np.array([0, 1, 2, 0, 1, 2])
    a = _one_hot([0, 1, 2, 1, 2, 2])        # wrong on rows 3, 4
    b = _one_hot([0, 1, 2, 1, 2, 0])        # wrong on rows 3, 4, 5
    c = _one_hot([1, 0, 0, 0, 1, 2])        # wrong on rows 0, 1, 2: exactly where b is right
    pairs = shared_errors(y, np.stack([a, b, c]), ["a", "b", "c"])
    assert [p["members"] for p in pairs] == [["a", "b"], ["a", "c"], ["b", "c"]]
    ab, ac, bc = pairs
    assert ab["both_wrong"] == pytest.approx(2 / 6) and ab["disagree"] == pytest.approx(1 / 6)
    assert ac["both_wrong"] == 0 and ac["disagree"] == pytest.approx(5 / 6)
    # phi of the 0/1 error vectors, as numpy's correlation gives it
    wrong = np.stack([p.argmax(1) != y for p in (a, b, c)])
    assert ab["error_correlation"] == pytest.approx(np.corrcoef(wrong[0], wrong[1])[0, 1])
    assert bc["error_correlation"] == pytest.approx(-1.0)
    # the same predictions twice: errors on exactly the same rows
    assert shared_errors(y, np.stack([b, b]), ["b", "b2"])[0]["error_correlation"] == pytest.approx(1.0)


def test_shared_errors_is_undefined_for_a_member_always_right():
    y = np.array([0, 1, 2])
    right, other = _one_hot(y), _one_hot([0, 2, 2])
    (pair,) = shared_errors(y, np.stack([right, other]), ["right", "other"])
    assert pair["error_correlation"] is None and pair["both_wrong"] == 0


def test_shared_errors_refuses_a_shape_that_does_not_match_the_names():
    with pytest.raises(ValueError, match="n_members=3"):
        shared_errors(np.array([0, 1]), np.zeros((2, 2, 3)), ["a", "b", "c"])
