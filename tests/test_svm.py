"""The fast kernel paths against scikit-learn's own RBF SVC and kernel."""

import numpy as np
import pytest
import skops.io as sio
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from magpipe.bundle import TRUSTED_SKOPS_TYPES
from magpipe.config import SVMConfig
from magpipe.metrics import calibration
from magpipe.svm import (RBFFeatures, VoteWithProbabilities, fit_svm, fold_nystroem, grid_search, make_svm, predict_with_confidence,
                         with_probabilities)


def _blobs(n: int, f: int = 12, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    centres = np.random.default_rng(99).normal(size=(k, f))  # the same classes for every sample
    rng = np.random.default_rng(seed)
    y = rng.integers(1, k + 1, n)
    return (centres[y - 1] + rng.normal(scale=1.2, size=(n, f))).astype("float32"), y


def test_exact_kernel_svm_is_sklearns_rbf_svc():
    X, y = _blobs(300)
    Xt, _ = _blobs(2000, seed=1)
    ours = make_svm(C=10.0, gamma=0.1).fit(X, y)
    ref = Pipeline([("scale", StandardScaler()),
                    ("svc", SVC(kernel="rbf", C=10.0, gamma=0.1, class_weight="balanced"))]).fit(X, y)
    np.testing.assert_allclose(ours.decision_function(Xt), ref.decision_function(Xt), rtol=1e-4, atol=1e-4)
    assert (ours.predict(Xt) == ref.predict(Xt)).mean() > 0.999
    assert ours.named_steps["svc"].support_.size == ref.named_steps["svc"].support_.size


@pytest.mark.parametrize("kernel,weight", [("exact", "balanced"), ("exact", "prior"), ("nystroem", "balanced"),
                                           ("lowrank", "balanced")])
def test_grid_search_is_sklearns_figure_for_figure(kernel, weight):
    """The cached search scores every grid point as GridSearchCV does, bit for bit, including a fold whose
    fitting side holds one class (NaN) and a fold whose validation side lacks a class."""
    import warnings

    from sklearn.exceptions import FitFailedWarning
    from sklearn.model_selection import GridSearchCV

    X, y = _blobs(240, k=4)
    order = np.argsort(y, kind="stable")
    X, y = X[order], y[order]  # classes in runs, so folds of contiguous cells miss classes
    idx = np.arange(len(y))
    folds = [(idx[idx % 3 != 0], idx[idx % 3 == 0]), (idx[40:160], idx[:40]), (idx[y == 1], idx[y == 2]),
             (idx[60:], idx[:60])]
    base = make_svm(kernel=kernel, n_components=30, class_weight=weight, parts=(8, 4))
    C, gamma = [0.1, 1.0, 10.0, 100.0], [0.01, 0.1, 1.0]
    ours = grid_search(base, X, y, folds, C=C, gamma=gamma)
    ref = GridSearchCV(base, {"svc__C": C, "kernel__gamma": gamma}, cv=folds, scoring="balanced_accuracy", n_jobs=1)
    warnings.simplefilter("ignore", UserWarning)  # (pytest restores the filters after the test)
    warnings.simplefilter("ignore", FitFailedWarning)
    ref.fit(X, y)
    np.testing.assert_array_equal(ours["mean_test_score"], ref.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(ours["std_test_score"], ref.cv_results_["std_test_score"])
    assert ours["params"] == ref.cv_results_["params"] and ours["best_index"] == ref.best_index_
    assert np.isnan(ours["mean_test_score"]).all()  # the one-class fold makes every mean NaN ...
    three = folds[:2] + folds[3:]
    ours, ref = grid_search(base, X, y, three, C=C, gamma=gamma), ref.set_params(cv=three).fit(X, y)
    np.testing.assert_array_equal(ours["mean_test_score"], ref.cv_results_["mean_test_score"])
    assert ours["best_index"] == ref.best_index_ and np.isfinite(ours["mean_test_score"]).all()  # ... and without it


@pytest.mark.parametrize("kernel", ["exact", "nystroem", "lowrank"])
def test_an_svm_calibrated_after_the_choice_is_the_one_calibrated_at_once(kernel):
    """A choice fits its candidates uncalibrated and calibrates the one it keeps: the same model, figure for
    figure, as fitting it calibrated; uncalibrated, the classes are the same and the probabilities NaN."""
    X, y = _blobs(240, k=4)
    cfg = SVMConfig(kernel=kernel, n_components=40, C=(1.0, 10.0), gamma_scale=(0.3, 1.0))
    at_once, info = fit_svm(X, y, np.arange(len(y)) % 6, cfg)
    plain, plain_info = fit_svm(X, y, np.arange(len(y)) % 6, cfg, calibrate=False)
    assert info == plain_info
    later = with_probabilities(plain, X, y, folds=list(GroupKFold(3).split(X, y, np.arange(len(y)) % 6)))
    Xt, _ = _blobs(3000, k=4, seed=5)
    np.testing.assert_array_equal(later.predict_proba(Xt), at_once.predict_proba(Xt))
    cls, conf = predict_with_confidence(plain, Xt)
    np.testing.assert_array_equal(cls, predict_with_confidence(at_once, Xt)[0])
    assert np.isnan(conf).all()


@pytest.mark.parametrize("seed", range(6))
def test_balanced_accuracy_is_sklearns_figure(seed):
    """Counted directly, bit for bit sklearn's, with predicted classes absent from the truth and one-class truths."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    from magpipe.metrics import balanced_accuracy

    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 400)), int(rng.integers(1, 9))
    y_true = np.ones(n, dtype=int) if seed == 0 else rng.integers(1, k + 1, n)  # seed 0: one class
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(1, k + 3, n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert balanced_accuracy(y_true, y_pred) == balanced_accuracy_score(y_true, y_pred)


def test_nystroem_with_every_landmark_reproduces_the_kernel():
    X, _ = _blobs(200)
    Z, _ = _blobs(50, seed=2)
    f = RBFFeatures(gamma=0.05, n_components=200).fit(X)
    np.testing.assert_allclose(f.transform(Z) @ f.transform(X).T, rbf_kernel(Z, X, gamma=0.05), atol=2e-3)


@pytest.mark.parametrize("kernel", ["exact", "nystroem", "lowrank"])
def test_fitted_svm_round_trips_through_skops_with_the_trusted_list(tmp_path, kernel):
    X, y = _blobs(240)
    groups = np.arange(len(y)) % 6
    model, info = fit_svm(X, y, groups, SVMConfig(kernel=kernel, n_components=40, C=(1.0, 10.0)))
    assert info["kernel"] == kernel and (info["n_support"] is None) == (kernel != "exact")
    sio.dump(model, tmp_path / "m.skops")
    untrusted = set(sio.get_untrusted_types(file=tmp_path / "m.skops"))
    assert untrusted <= set(TRUSTED_SKOPS_TYPES)
    loaded = sio.load(tmp_path / "m.skops", trusted=sorted(untrusted))
    Xt, yt = _blobs(20000, seed=3)  # more than one prediction batch
    cls, conf = predict_with_confidence(loaded, Xt)
    ref_cls, ref_conf = predict_with_confidence(model, Xt)
    np.testing.assert_array_equal(cls, ref_cls)
    np.testing.assert_array_equal(cls, model.predict(Xt))  # the class is the SVM's own vote ...
    assert (cls == model.estimator_.predict(Xt)).mean() > 0.999  # (libsvm's, but for ties)
    proba = model.predict_proba(Xt)  # ... and the confidence its calibrated probability
    np.testing.assert_allclose(conf, proba[np.arange(len(cls)), np.searchsorted(model.classes_, cls)], rtol=1e-5)
    assert (cls == yt).mean() > 0.8 and np.all((conf > 0) & (conf <= 1))


def _field(n: int, shares: list[float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping classes in the shares a survey holds them (4 features, classes 1..K)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(np.arange(1, len(shares) + 1), size=n, p=shares)
    return (np.eye(len(shares), 4)[y - 1] + rng.normal(size=(n, 4))).astype("float32"), y


def test_confidence_says_how_often_the_map_is_right_where_it_is_used():
    """Training cells are drawn per class (as many of a rare unit as of the commonest), the map is used on
    the survey's mix: the confidence, fitted on the training cells weighted to that mix (``mix``), says how
    often the vote is right on held-out cells of the mix; fitted unweighted, it is far off."""
    shares = [0.8, 0.1, 0.1]
    X_all, y_all = _field(30000, shares, seed=1)
    pick = np.concatenate([np.flatnonzero(y_all == c)[:150] for c in (1, 2, 3)])  # balanced training cells
    X, y = X_all[pick], y_all[pick]
    Xt, yt = _field(20000, shares, seed=2)
    folds = list(GroupKFold(3).split(X, y, np.arange(len(y)) % 9))
    svm = make_svm(C=1.0, gamma=0.25)
    ece = {}
    for name, mix in {"weighted": np.array([0.0, *shares]), "unweighted": None}.items():
        model = VoteWithProbabilities(svm, folds=folds, mix=mix).fit(X, y)
        cls, conf = predict_with_confidence(model, Xt)
        ece[name] = calibration(cls == yt, conf)["ece"]
        assert np.all((conf > 0) & (conf < 1))
    assert ece["weighted"] < 0.03 and ece["unweighted"] > 0.08, ece


def test_a_bundle_calibrated_before_the_top_label_confidence_keeps_its_probabilities():
    """The voted class's confidence, 0 for the others; a fitted model without ``top_label_`` (saved before it)
    normalises its sigmoids, as it was fitted for; on the tiles' path (Decision) as in sklearn's."""
    import torch

    from magpipe.decision import Decision

    X, y = _blobs(240)
    model = VoteWithProbabilities(make_svm(C=1.0, gamma=0.1), folds=3).fit(X, y)
    Xt, _ = _blobs(500, seed=4)
    d = model.decision_function(Xt)
    sigmoids = 1 / (1 + np.exp(-(d * model.slope_ + model.intercept_)))
    vote = d.argmax(1)
    expected = {"top-label": np.eye(3)[vote] * sigmoids[np.arange(len(vote)), vote][:, None],
                "before": sigmoids / sigmoids.sum(1, keepdims=True)}
    for kind in ("top-label", "before"):
        if kind == "before":
            del model.top_label_
        np.testing.assert_allclose(model.predict_proba(Xt), expected[kind], rtol=1e-6)
        on_tiles = Decision.of(model).scores(torch.from_numpy(Xt))[1].numpy()
        np.testing.assert_allclose(on_tiles, expected[kind], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_the_low_rank_svms_decision_is_libsvms_linear_svc(k):
    """LinearKernelSVC scores with its primal weights what libsvm's linear SVC scores over its support vectors."""
    from magpipe.svm import LinearKernelSVC

    X, y = _blobs(300, k=k)
    Xt, _ = _blobs(2000, k=k, seed=1)
    ours, ref = LinearKernelSVC(C=3.0).fit(X, y), SVC(kernel="linear", C=3.0).fit(X, y)
    np.testing.assert_allclose(ours.decision_function(Xt), ref.decision_function(Xt), rtol=1e-7, atol=1e-7)
    np.testing.assert_array_equal(ours.predict(Xt), ref.predict(Xt))
    assert ours.get_params() == {"C": 3.0, "class_weight": None}


def test_the_low_rank_svm_on_every_landmark_is_the_exact_svm():
    """``lowrank`` is the exact SVC on the Nystroem approximation of its kernel: with every training cell a
    landmark the approximation is the kernel, and the decision function the exact SVM's."""
    X, y = _blobs(200)
    Xt, _ = _blobs(2000, seed=1)
    exact = make_svm(C=10.0, gamma=0.05, kernel="exact").fit(X, y)
    low = make_svm(C=10.0, gamma=0.05, kernel="lowrank", n_components=len(X)).fit(X, y)
    np.testing.assert_allclose(low.decision_function(Xt), exact.decision_function(Xt), atol=2e-2)
    np.testing.assert_array_equal(low.predict(Xt), exact.predict(Xt))
    few = make_svm(C=10.0, gamma=0.05, kernel="lowrank", n_components=20).fit(X, y)
    assert (few.predict(Xt) != exact.predict(Xt)).any()  # (the comparison can tell an approximation apart)


def _kernel_cfg(kernel: str, n_components: int):
    from magpipe.config import RunConfig

    return RunConfig.load(None, svm={"kernel": kernel, "n_components": n_components, "C": [0.1, 1.0],
                                     "gamma_scale": [0.3, 1.0]})


@pytest.mark.parametrize("kernel", ["exact", "nystroem", "lowrank"])
def test_a_configured_kernel_is_kept_without_a_choice(kernel):
    from magpipe.selection import choose_kernel

    X, y = _blobs(240, k=4)
    cfg = _kernel_cfg(kernel, 20)
    fit = fit_svm(X, y, np.arange(len(y)) % 6, cfg.svm, calibrate=False)
    model, info, table, models = choose_kernel(X, y, np.arange(len(y)) % 6, fit, cfg)
    assert model is fit[0] and info["kernel"] == kernel and table == {} == models


def test_auto_keeps_the_exact_svm_where_it_is_the_cheaper_to_apply():
    """No more support vectors than the low-rank kernel's landmarks: exact, with nothing fitted or scored."""
    from magpipe.selection import choose_kernel

    X, y = _blobs(240, k=4)
    cfg = _kernel_cfg("auto", 300)
    fit = fit_svm(X, y, np.arange(len(y)) % 6, cfg.svm, calibrate=False)
    assert fit[1]["kernel"] == "exact" and fit[1]["n_support"] <= 300
    model, info, table, _ = choose_kernel(X, y, np.arange(len(y)) % 6, fit, cfg)
    assert model is fit[0] and info is fit[1] and table == {}


def test_auto_chooses_the_low_rank_kernel_by_validation_at_the_exact_svms_c_and_gamma():
    """More support vectors than landmarks: the low-rank SVM at the exact search's C and gamma is scored on the
    same folds, and kept unless exact validates better by more than one standard error."""
    from magpipe.evaluation import best_by_validation
    from magpipe.selection import choose_kernel

    X, y = _blobs(400, k=4)
    folds = [(np.flatnonzero(np.arange(400) % 4 != f), np.flatnonzero(np.arange(400) % 4 == f)) for f in range(4)]
    for landmarks in (10, 60):
        cfg = _kernel_cfg("auto", landmarks)
        fit = fit_svm(X, y, folds, cfg.svm, calibrate=False)
        assert fit[1]["n_support"] > landmarks
        model, info, table, models = choose_kernel(X, y, folds, fit, cfg)
        assert set(table) == {"lowrank", "exact"} and table["exact"] is fit[1] and models["exact"] is fit[0]
        low = table["lowrank"]
        assert (low["C"], low["gamma"], low["n_components"]) == (fit[1]["C"], fit[1]["gamma"], landmarks)
        assert np.isfinite(low["cv_balanced_accuracy"]) and low["cv_se"] >= 0
        chosen = best_by_validation(table, ["lowrank", "exact"])
        assert info["kernel"] == chosen == ("exact" if landmarks == 10 else "lowrank")  # (both outcomes)
        assert model is models[chosen]
        assert models["lowrank"].named_steps["kernel"].n_components == landmarks


def test_folding_the_nystroem_normalisation_keeps_the_decision_function():
    X, y = _blobs(300)
    Xt, _ = _blobs(3000, seed=4)
    model = make_svm(C=10.0, gamma=0.05, kernel="nystroem", n_components=60).fit(X, y)
    before = model.decision_function(Xt)
    fold_nystroem(model)
    assert model.named_steps["kernel"].normalization_ is None
    np.testing.assert_allclose(model.decision_function(Xt), before, rtol=1e-4, atol=1e-4)


def test_part_scaler_gives_each_part_of_a_concatenation_equal_weight():
    from magpipe.svm import PartScaler

    rng = np.random.default_rng(0)
    X = np.hstack([rng.normal(5, 3, (500, 40)), rng.normal(-1, 0.2, (500, 4))])
    Z = PartScaler((40, 4)).fit(X).transform(X)
    per_part = [Z[:, :40].var(0).sum(), Z[:, 40:].var(0).sum()]
    np.testing.assert_allclose(per_part, [22.0, 22.0], rtol=1e-6)  # 44 features, half the distance each
    np.testing.assert_allclose(PartScaler().fit(X).transform(X).var(0), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="add up"):
        PartScaler((40, 5)).fit(X)


def test_an_svm_with_a_single_cell_class_still_predicts_without_confidence():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (30, 4)), rng.normal(4, 1, (1, 4))]).astype("float32")
    y = np.array([1] * 30 + [2])
    model, _ = fit_svm(X, y, np.arange(31) % 3, SVMConfig(C=(10.0,), gamma_scale=(1.0,)))
    cls, conf = predict_with_confidence(model, X)
    assert set(cls.tolist()) <= {1, 2} and np.isnan(conf).all()
