import json
import warnings

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import StratifiedKFold

from ensemble_fer.ensemble.weighted import WeightedEnsemble, _normalise


def _dirichlet(rng, n, k, alpha=1.0):
    return rng.dirichlet(np.full(k, alpha), size=n)


def _one_perfect(n=400, k=7, n_noise=3, seed=0):
    """Member 0 always ranks the true class first (>= 0.6); the others are pure noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    perfect = 0.6 * np.eye(k)[y] + 0.4 * _dirichlet(rng, n, k)
    noise = [_dirichlet(rng, n, k) for _ in range(n_noise)]
    return np.stack([perfect] + noise), y


def _complementary(n=600, k=6, seed=0):
    """Member A is right and confident on classes 0-2, B on 3-5; each is wrong elsewhere."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    members = []
    for good in (np.arange(k) < k // 2, np.arange(k) >= k // 2):
        p = np.empty((n, k))
        for i, label in enumerate(y):
            if good[label]:
                row = 0.2 * _dirichlet(rng, 1, k)[0]
                row[label] += 0.8
            else:  # a confident-ish wrong answer
                wrong = rng.choice([c for c in range(k) if c != label])
                row = 0.6 * _dirichlet(rng, 1, k)[0]
                row[wrong] += 0.4
                row[label] = min(row[label], 0.05)
                row /= row.sum()
            p[i] = row
        members.append(p)
    return np.stack(members), y


def _accuracy(proba, y):
    return float(np.mean(proba.argmax(axis=1) == y))


@pytest.mark.parametrize("objective", ["accuracy", "log-loss"])
def test_weights_go_to_the_perfect_member(objective):
    probas, y = _one_perfect()
    ensemble = WeightedEnsemble(objective=objective).fit(probas, y)
    assert ensemble.weights_[0] > 0.9
    assert ensemble.weights_.argmax() == 0
    assert ensemble.score(probas, y) == 1.0
    assert ensemble.n_members_ == 4
    np.testing.assert_array_equal(ensemble.classes_, np.arange(7))
    if objective == "accuracy":
        assert ensemble.score_ == 1.0
    else:  # log-loss: no better than the perfect member alone, much better than equal weights
        alone = -np.mean(np.log(probas[0, np.arange(len(y)), y]))
        equal = -np.mean(np.log(probas.mean(axis=0)[np.arange(len(y)), y]))
        assert ensemble.score_ <= alone + 1e-9
        assert ensemble.score_ < equal - 0.1


@pytest.mark.parametrize("objective", ["accuracy", "log-loss"])
def test_weights_are_a_convex_combination(objective):
    rng = np.random.default_rng(3)
    probas = np.stack([_dirichlet(rng, 200, 5, 0.5) for _ in range(4)])
    y = rng.integers(0, 5, 200)
    ensemble = WeightedEnsemble(objective=objective).fit(probas, y)
    assert ensemble.weights_.shape == (4,)
    assert (ensemble.weights_ >= 0).all()
    assert ensemble.weights_.sum() == pytest.approx(1.0)
    proba = ensemble.predict_proba(probas)
    np.testing.assert_allclose(proba, np.einsum("m,mnk->nk", ensemble.weights_, probas))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(ensemble.predict(probas), proba.argmax(axis=1))


def test_fit_is_never_worse_than_equal_weights_or_best_member_on_fit_data():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 7, 500)
    probas = np.stack([0.3 * np.eye(7)[y] * rng.random((500, 1)) + 0.7 * _dirichlet(rng, 500, 7)
                       for _ in range(5)])
    probas /= probas.sum(axis=2, keepdims=True)
    ensemble = WeightedEnsemble(maxiter=20).fit(probas, y)
    assert ensemble.score_ >= _accuracy(probas.mean(axis=0), y)
    assert ensemble.score_ >= max(_accuracy(p, y) for p in probas)
    assert ensemble.score_ == ensemble.score(probas, y)


def _three_weak_members(n=300, k=5, seed=2):
    """Three weak, differently informative members: the best weights lie inside the simplex."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    probas = np.stack([0.25 * np.eye(k)[y] * rng.random((n, 1)) + 0.75 * _dirichlet(rng, n, k, 0.7)
                       for _ in range(3)])
    return probas / probas.sum(axis=2, keepdims=True), y


def _simplex_grid(step=0.01):
    ticks = np.linspace(0, 1, round(1 / step) + 1)
    return np.array([(a, b, max(1 - a - b, 0.0)) for a in ticks for b in ticks if a + b <= 1 + 1e-9])


def test_optimum_matches_a_grid_search_over_the_simplex():
    probas, y = _three_weak_members()
    grid = _simplex_grid()
    grid_accuracy = (np.einsum("sm,mnk->snk", grid, probas).argmax(axis=2) == y).mean(axis=1)
    grid_log_loss = -np.log(grid @ probas[:, np.arange(len(y)), y]).mean(axis=1)
    # the optimum is a real ensemble: better than every member and than equal weights
    assert grid_accuracy.max() > max(_accuracy(p, y) for p in probas) + 0.1
    assert grid_accuracy.max() > _accuracy(probas.mean(axis=0), y)
    accurate = WeightedEnsemble(objective="accuracy").fit(probas, y)
    assert accurate.score_ >= grid_accuracy.max()
    calibrated = WeightedEnsemble(objective="log-loss").fit(probas, y)
    assert calibrated.score_ <= grid_log_loss.min() + 1e-9
    assert calibrated.weights_.min() > 0.1  # an interior optimum, not one of the starting points


def test_same_seed_same_weights_other_seeds_may_differ_but_reach_the_optimum():
    probas, y = _three_weak_members()
    a = WeightedEnsemble(seed=7).fit(probas, y)
    b = WeightedEnsemble(seed=7).fit(probas, y)
    np.testing.assert_array_equal(a.weights_, b.weights_)
    assert a.score_ == b.score_
    others = [WeightedEnsemble(seed=seed).fit(probas, y) for seed in (8, 9)]
    for other in others:  # accuracy ties on a plateau: other weights, the same score
        assert other.score_ == a.score_
    perfect, y_perfect = _one_perfect(seed=1)
    for seed in (8, 9):
        c = WeightedEnsemble(seed=seed).fit(perfect, y_perfect)
        assert c.weights_[0] > 0.9 and c.score(perfect, y_perfect) == 1.0


def test_complementary_members_ensemble_beats_both():
    probas, y = _complementary()
    members = [_accuracy(p, y) for p in probas]
    assert max(members) < 0.6  # each is right on about half the classes only
    ensemble = WeightedEnsemble().fit(probas, y)
    assert ensemble.score(probas, y) > max(members) + 0.3
    assert min(ensemble.weights_) > 0.2  # both members are needed
    # and on fresh data from the same process, not only on the fit data
    fresh, y_fresh = _complementary(seed=1)
    assert ensemble.score(fresh, y_fresh) > max(_accuracy(p, y_fresh) for p in fresh) + 0.3


def test_class_names_are_predicted():
    probas, y = _complementary(n=120)
    names = ["a", "b", "c", "d", "e", "f"]
    labels = np.array(names)[y]
    ensemble = WeightedEnsemble(maxiter=10).fit(probas, labels, classes=names)
    predicted = ensemble.predict(probas)
    np.testing.assert_array_equal(predicted, np.array(names)[ensemble.predict_proba(probas).argmax(1)])
    # one label space, as VotingClassifier: fit and score take what predict returns
    assert ensemble.score(probas, labels) == np.mean(predicted == labels) == ensemble.score_
    with pytest.raises(ValueError, match=r"y must hold labels of classes \['a', 'b'"):
        ensemble.score(probas, y)       # class indices are not labels of this ensemble
    with pytest.raises(ValueError, match=r"y must hold labels of classes"):
        WeightedEnsemble().fit(probas, y, classes=names)
    with pytest.raises(ValueError, match="classes"):
        WeightedEnsemble().fit(probas, labels, classes=names[:5])


def test_single_member_warns_and_is_that_member():
    probas, y = _one_perfect(n_noise=1)
    single = probas[1:]
    with pytest.warns(UserWarning, match="the ensemble is that member"):
        ensemble = WeightedEnsemble().fit(single, y)
    np.testing.assert_array_equal(ensemble.weights_, [1.0])
    np.testing.assert_array_equal(ensemble.predict(single), single[0].argmax(axis=1))
    assert ensemble.score_ == _accuracy(single[0], y)


def test_input_errors_are_clear():
    probas, y = _one_perfect(n=50)
    ensemble = WeightedEnsemble(maxiter=5)
    with pytest.raises(ValueError, match=r"shape \(n_members, n_samples, n_classes\)"):
        ensemble.fit(probas[0], y)
    with pytest.raises(ValueError, match="one label per sample of probas \\(50\\); got 49"):
        ensemble.fit(probas, y[:-1])
    bad = probas.copy()
    bad[2, 10, 3] = np.nan
    with pytest.raises(ValueError, match="member 2 must be finite; sample 10"):
        ensemble.fit(bad, y)
    with pytest.raises(ValueError, match=r"member 0 must be probabilities in \[0, 1\]"):
        ensemble.fit(np.log(probas + 1e-9), y)
    unnormalised = probas.copy()
    unnormalised[1] *= 0.5
    with pytest.raises(ValueError, match="member 1 rows must sum to 1"):
        ensemble.fit(unnormalised, y)
    with pytest.raises(ValueError, match=r"class indices in \[0, 7\); got 7"):
        ensemble.fit(probas, np.where(np.arange(50) == 3, 7, y))
    with pytest.raises(ValueError, match="at least one sample"):
        ensemble.fit(probas[:, :0], y[:0])
    with pytest.raises(ValueError, match=r"objective must be one of \('accuracy', 'log-loss'\); got 'f1'"):
        WeightedEnsemble(objective="f1").fit(probas, y)
    with pytest.raises(ValueError, match="maxiter must be an int >= 1; got 0"):
        WeightedEnsemble(maxiter=0).fit(probas, y)


def test_predict_errors():
    probas, y = _one_perfect(n=60)
    with pytest.raises(NotFittedError):
        WeightedEnsemble().predict_proba(probas)
    with pytest.raises(NotFittedError):
        WeightedEnsemble().predict(probas)
    ensemble = WeightedEnsemble(maxiter=5).fit(probas, y)
    with pytest.raises(ValueError, match="the 4 members the ensemble was fitted on .*; got 3"):
        ensemble.predict(probas[:3])
    with pytest.raises(ValueError, match="the 7 classes .*; got 6"):
        other = probas[:, :, :6] / probas[:, :, :6].sum(axis=2, keepdims=True)
        ensemble.predict(other)


def test_normalise_all_zero_gives_equal_weights():
    np.testing.assert_allclose(_normalise(np.zeros(4)), np.full(4, 0.25))
    np.testing.assert_allclose(_normalise(np.array([0.2, 0.0, 0.6])), [0.25, 0.0, 0.75])


def test_cross_validated_accuracy_uses_held_out_folds():
    # pure noise: in-sample weights overfit, held-out accuracy falls back towards chance
    rng = np.random.default_rng(11)
    n, k = 150, 3
    y = rng.integers(0, k, n)
    probas = np.stack([_dirichlet(rng, n, k, 0.3) for _ in range(5)])
    ensemble = WeightedEnsemble(maxiter=30)
    in_sample = ensemble.fit(probas, y).score_
    cv = ensemble.cross_validated_accuracy(probas, y, n_splits=5, seed=3)
    assert len(cv["scores"]) == 5 and len(cv["weights"]) == 5
    assert sum(cv["fold_sizes"]) == n
    assert cv["mean"] == pytest.approx(np.mean(cv["scores"]))
    assert cv["std"] == pytest.approx(np.std(cv["scores"]))
    assert cv["mean"] < in_sample
    # fold 0 is the first stratified fold, fitted without its own samples
    train, held_out = next(StratifiedKFold(5, shuffle=True, random_state=3).split(probas[0], y))
    fold = WeightedEnsemble(maxiter=30).fit(probas[:, train], y[train])
    np.testing.assert_array_equal(fold.weights_, cv["weights"][0])
    assert cv["scores"][0] == fold.score(probas[:, held_out], y[held_out])
    # the estimator it was called on keeps its own fit
    assert ensemble.score_ == in_sample
    with pytest.raises(ValueError, match="n_splits must be an int in \\[2, n_samples=150\\]; got 1"):
        ensemble.cross_validated_accuracy(probas, y, n_splits=1)


def test_cross_validated_accuracy_single_member_warns_once():
    probas, y = _one_perfect(n=100, n_noise=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cv = WeightedEnsemble().cross_validated_accuracy(probas, y, n_splits=4)
    assert len([w for w in caught if issubclass(w.category, UserWarning)]) == 1
    assert cv["scores"] == [1.0] * 4


def test_json_round_trip():
    probas, y = _complementary(n=120)
    ensemble = WeightedEnsemble(objective="log-loss", seed=4).fit(
        probas, np.array(["a", "b", "c", "d", "e", "f"])[y], classes=["a", "b", "c", "d", "e", "f"])
    data = json.loads(json.dumps(ensemble.to_json()))
    restored = WeightedEnsemble.from_json(data)
    assert restored.get_params() == ensemble.get_params()
    np.testing.assert_array_equal(restored.weights_, ensemble.weights_)
    np.testing.assert_array_equal(restored.classes_, ensemble.classes_)
    np.testing.assert_array_equal(restored.predict_proba(probas), ensemble.predict_proba(probas))
    np.testing.assert_array_equal(restored.predict(probas), ensemble.predict(probas))
    assert restored.score_ == ensemble.score_
    # integer classes come back as integers
    plain = WeightedEnsemble.from_json(json.loads(json.dumps(
        WeightedEnsemble(maxiter=5).fit(probas, y).to_json())))
    assert plain.predict(probas).dtype.kind == "i"


def test_from_json_rejects_bad_data():
    with pytest.raises(ValueError, match="missing the key"):
        WeightedEnsemble.from_json({"objective": "accuracy", "classes": [0, 1]})
    with pytest.raises(ValueError, match="summing to 1"):
        WeightedEnsemble.from_json({"objective": "accuracy", "weights": [0.5, 0.6], "classes": [0, 1]})
    with pytest.raises(ValueError, match="objective must be one of"):
        WeightedEnsemble.from_json({"objective": "nope", "weights": [1.0], "classes": [0, 1]})
    with pytest.raises(NotFittedError):
        WeightedEnsemble().to_json()


def test_parameters_and_saved_data_are_input_errors_arrays_are_contract_errors():
    """The parameters fit_ensemble's options set and the dict read from an ensemble file are
    InputError (one line at the command line); bad probability arrays are a plain ValueError,
    since the pipelines check the files they come from first (a failure here is a bug)."""
    from ensemble_fer.errors import InputError

    probas, y = _one_perfect(n=60, k=3, n_noise=1)
    for params in ({"objective": "f1"}, {"seed": -1}, {"maxiter": 0}, {"popsize": 0}, {"tol": float("nan")}):
        with pytest.raises(InputError):
            WeightedEnsemble(**params).fit(probas, y)
    with pytest.raises(InputError, match=r"n_splits must be an int in \[2, n_samples=60\]; got 1"):
        WeightedEnsemble().cross_validated_accuracy(probas, y, n_splits=1)
    fitted = WeightedEnsemble(maxiter=5).fit(probas, y).to_json()
    for broken in ({**fitted, "weights": [0.5]}, {**fitted, "format": "other"}, {"weights": [1.0]}, []):
        with pytest.raises(InputError):
            WeightedEnsemble.from_json(broken)

    bad = probas.copy()
    bad[0, 0] = np.nan
    for call in (lambda: WeightedEnsemble().fit(bad, y), lambda: WeightedEnsemble().fit(probas, y[:-1]),
                 lambda: WeightedEnsemble(maxiter=5).fit(probas, y).predict_proba(probas[:1])):
        with pytest.raises(ValueError) as err:
            call()
        assert not isinstance(err.value, InputError), err.value
