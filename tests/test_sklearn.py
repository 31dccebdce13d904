"""The scikit-learn estimator: scikit-learn's own estimator checks, then what they do not cover (images,
convolutional presets, persistence, searches, and the same result as `cnnx train`)."""

from __future__ import annotations

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from cnnx.sklearn import MAX_INPUT_SIZE, CNNClassifier

# float64, so that predictions on a subset equal those on the whole batch to the 1e-7 the checks demand;
# lr 1e-2 and 20 epochs, so that the checks' easy problems are learnt (they require accuracy > 0.83).
CHECKED = CNNClassifier(model="mlp", epochs=20, batch_size=32, lr=1e-2, dtype="float64", random_state=0)


@parametrize_with_checks([CHECKED])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# -- beyond the checks: images, convolutional presets, persistence ---------------------------------------

import pickle  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer  # noqa: E402

from cnnx.io import load_model  # noqa: E402

from helpers import blobs  # noqa: E402


@pytest.fixture(scope="module")
def images():
    """Blob images (uint8, 28x28) in 10 classes: 200 to train on, 100 to test."""
    (x, y), (xt, yt) = blobs(200, seed=1), blobs(100, seed=2)
    return x, y, xt, yt


def small_cnn(**params) -> CNNClassifier:
    return CNNClassifier(model="seed", epochs=3, batch_size=20, lr=3e-3, random_state=0, **params)


@pytest.fixture(scope="module")
def fitted(images):
    x, y, _, _ = images
    return small_cnn().fit(x, y)


def test_the_seed_cnn_learns_blob_images(fitted, images):
    _, _, xt, yt = images
    assert fitted.score(xt, yt) > 0.9 and fitted.n_features_in_ == 784 and len(fitted.history_) == 3


@pytest.mark.parametrize("shape", [(-1, 784), (-1, 28, 28), (-1, 1, 28, 28)])
def test_images_may_come_flat_square_or_with_a_channel_axis(fitted, images, shape):
    x, y, xt, _ = images
    again = small_cnn().fit(x.reshape(shape), y)
    assert np.array_equal(again.predict_proba(xt.reshape(shape)), fitted.predict_proba(xt))


def test_uint8_pixels_and_the_same_pixels_scaled_to_floats_predict_alike(fitted, images):
    xt = images[2]
    assert np.allclose(fitted.predict_proba(xt), fitted.predict_proba(xt / 255.0), atol=1e-6)


def test_string_labels_come_back_as_strings(images):
    x, y, xt, _ = images
    names = np.array([f"class-{k}" for k in range(10)])
    estimator = CNNClassifier(model="mlp", epochs=2, random_state=0).fit(x, names[y])
    assert set(estimator.predict(xt)) <= set(names) and list(estimator.classes_) == sorted(names)


def test_a_clone_has_the_settings_and_none_of_the_training(fitted):
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params() and not hasattr(copy, "model_")


def test_a_pickled_estimator_predicts_identically_and_holds_only_host_arrays(fitted, images):
    blob = pickle.dumps(fitted)
    assert b"cnnx.backends" not in blob and b"cupy" not in blob, "a backend object was pickled"
    assert np.array_equal(pickle.loads(blob).predict_proba(images[2]), fitted.predict_proba(images[2]))


def test_the_estimator_saves_as_a_cnnx_model_file_and_comes_back_from_one(fitted, images, tmp_path):
    path = fitted.save_model(tmp_path / "estimator.npz")
    back = CNNClassifier.from_model_file(path)
    assert np.array_equal(back.predict(images[2]), fitted.predict(images[2]))
    assert back.get_params() == fitted.get_params() and load_model(path).parameter_count() > 0


def test_partial_fit_trains_one_epoch_at_a_time_and_warm_start_continues(images):
    x, y, _, _ = images
    estimator = CNNClassifier(model="mlp", epochs=2, random_state=0)
    estimator.partial_fit(x[:100], y[:100], classes=np.arange(10)).partial_fit(x[100:], y[100:])
    assert len(estimator.history_) == 2
    warm = CNNClassifier(model="mlp", epochs=2, random_state=0, warm_start=True).fit(x, y)
    before = warm.model_.state_dict()["1.W"].copy()
    warm.fit(x, y)
    assert len(warm.history_) == 4 and not np.array_equal(before, warm.model_.state_dict()["1.W"])
    with pytest.raises(ValueError, match="not seen in the first fit"):
        estimator.partial_fit(x[:5], np.array([11] * 5))


def test_partial_fit_takes_the_classes_in_any_order_and_keeps_them_sorted(images):
    x, y = images[0][:40], np.where(images[1][:40] % 2, 7, 3)
    estimator = CNNClassifier(model="mlp", batch_size=20, random_state=0)
    estimator.partial_fit(x, y, classes=[7, 3]).partial_fit(x, y, classes=[3, 7])
    assert estimator.classes_.tolist() == [3, 7], f"classes_ {estimator.classes_.tolist()}"
    assert set(estimator.predict(x)) <= {3, 7} and estimator.predict_proba(x).shape == (40, 2)


@pytest.mark.parametrize("way", ["warm_start", "partial_fit"])
def test_training_again_continues_the_same_optimizer_so_its_steps_add_up(images, way):
    x, y = images[0][:60], images[1][:60]  # 3 steps of 20 an epoch
    estimator = CNNClassifier(model="mlp", epochs=2, batch_size=20, random_state=0, warm_start=True)
    train = estimator.fit if way == "warm_start" else lambda x, y: estimator.partial_fit(x, y, np.arange(10))
    train(x, y)
    first, steps = estimator.optimizer_, estimator.optimizer_.steps
    train(x, y)
    assert estimator.optimizer_ is first, "the second call trained with a new optimizer"
    assert estimator.optimizer_.steps == 2 * steps, f"{steps} steps, then {estimator.optimizer_.steps} in all"


def test_a_validation_fraction_is_scored_every_epoch(images):
    x, y, _, _ = images
    estimator = CNNClassifier(model="mlp", epochs=2, random_state=0, validation_fraction=0.2).fit(x, y)
    assert all(row["test_accuracy"] is not None for row in estimator.history_)
    assert all(
        row["test_accuracy"] is None for row in CNNClassifier(model="mlp", epochs=1).fit(x, y).history_
    )


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (lambda e, x, y: e.predict(x), NotFittedError, "not fitted"),
        (lambda e, x, y: e.fit(x.reshape(-1, 784)[:, :100], y), ValueError, "100 features are not 1x28x28"),
        (lambda e, x, y: e.fit(x, np.zeros(len(y))), ValueError, "1 class"),
        (lambda e, x, y: e.set_params(image_shape=(1, 5, 20)).fit(x.reshape(-1, 784)[:, :100], y), ValueError,
         "does not fit together"),
        (lambda e, x, y: e.set_params(validation_fraction=1.5).fit(x, y), ValueError, "validation_fraction"),
    ],
)  # fmt: skip
def test_bad_input_is_a_scikit_learn_style_error(images, make, error, fragment):
    x, y, _, _ = images
    with pytest.raises(error, match=fragment):
        make(small_cnn(), x, y)


@pytest.fixture(scope="module")
def fitted_mlp(images):
    return CNNClassifier(model="mlp", epochs=1, batch_size=20, random_state=0).fit(
        images[0][:40], images[1][:40]
    )


# Each way into the estimator, as (estimator, X, y) -> call; predicting ones use the fitted "mlp".
ENTRY_POINTS = {
    "fit": lambda e, x, y: e.fit(x, y),
    "partial_fit": lambda e, x, y: e.partial_fit(x, y, classes=np.arange(10)),
    "predict": lambda e, x, y: e.predict(x),
    "predict_proba": lambda e, x, y: e.predict_proba(x),
}


def estimator_for(entry: str, fitted_mlp, **params) -> CNNClassifier:
    if entry.startswith("predict"):
        return fitted_mlp
    return CNNClassifier(model="mlp", epochs=1, batch_size=20, random_state=0).set_params(**params)


@pytest.mark.parametrize("entry", ["fit", "partial_fit"])
@pytest.mark.parametrize(
    "random_state", ["abc", 1.5, np.random.default_rng(0)], ids=["string", "float", "Generator"]
)
def test_a_random_state_scikit_learn_refuses_is_refused_in_its_words(images, entry, random_state):
    x, y = images[0][:20], images[1][:20]
    estimator = CNNClassifier(model="mlp", epochs=1, random_state=random_state)
    with pytest.raises(ValueError, match="cannot be used to seed a numpy.random.RandomState instance"):
        ENTRY_POINTS[entry](estimator, x, y)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_finite_values_beyond_the_model_s_float32_are_refused_with_the_largest_magnitude(
    images, fitted_mlp, entry
):
    x, y = images[0][:20].reshape(20, -1) / 255.0, images[1][:20]
    x[3, 7] = -1e39  # finite in float64, inf in float32: the probabilities would come out NaN
    with pytest.raises(ValueError, match=r"magnitude 1e\+39 .*float32") as info:
        ENTRY_POINTS[entry](estimator_for(entry, fitted_mlp), x, y)
    assert "\n" not in str(info.value), f"message spans lines: {info.value}"


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("shape", [(0, 784), (0, 28, 28), (0, 1, 28, 28)], ids=["flat", "square", "channel"])
def test_no_samples_is_scikit_learn_s_own_error_whatever_the_shape(fitted_mlp, entry, shape):
    with pytest.raises(ValueError, match=r"Found array with 0 sample\(s\) .* a minimum of 1 is required"):
        ENTRY_POINTS[entry](estimator_for(entry, fitted_mlp), np.zeros(shape, np.uint8), np.zeros(0, int))


@pytest.mark.parametrize("entry", ["fit", "partial_fit"])
def test_mlp_features_beyond_the_input_cap_name_the_count_and_the_cap(entry):
    x, y = np.zeros((4, MAX_INPUT_SIZE + 1), np.float32), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="'mlp' model takes at most 65,536 features, X has 65,537"):
        ENTRY_POINTS[entry](CNNClassifier(model="mlp", epochs=1), x, y)


def test_the_estimator_s_input_cap_is_the_run_configuration_s():
    from cnnx.errors import ConfigError
    from cnnx.training import RunConfig

    assert RunConfig(model="mlp", input_shape=(MAX_INPUT_SIZE,)).input_shape == (MAX_INPUT_SIZE,)
    with pytest.raises(ConfigError, match="input_shape"):
        RunConfig(model="mlp", input_shape=(MAX_INPUT_SIZE + 1,))


def test_a_pipeline_and_a_grid_search_over_lr_run_on_images(images):
    x, y, xt, yt = images
    pipeline = make_pipeline(FunctionTransformer(lambda a: a.reshape(len(a), -1)), small_cnn())
    search = GridSearchCV(pipeline, {"cnnclassifier__lr": [1e-4, 3e-3]}, cv=2).fit(x, y)
    assert search.best_params_ == {"cnnclassifier__lr": 3e-3} and search.score(xt, yt) > 0.8


# -- searches in parallel: local processes and a Dask cluster ---------------------------------------------


def _blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")


def _search() -> GridSearchCV:
    estimator = CNNClassifier(model="mlp", epochs=3, batch_size=32, random_state=0)
    return GridSearchCV(estimator, {"lr": [1e-4, 1e-3, 1e-2]}, cv=2, n_jobs=2)


def test_a_grid_search_gives_the_same_results_in_local_processes_and_on_a_dask_cluster(images):
    distributed = pytest.importorskip(
        "distributed", reason="the cluster extra (dask[distributed]) is not installed"
    )
    import joblib

    x, y = images[0].reshape(200, -1), images[1]
    local = _search().fit(x, y)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        with distributed.Client(cluster) as client, joblib.parallel_config(backend="dask"):
            remote = _search().fit(x, y)
            worker_threads = set(client.run(_blas_threads).values())
    assert local.best_params_ == remote.best_params_, (local.best_params_, remote.best_params_)
    for key in ("mean_test_score", "split0_test_score", "split1_test_score"):
        assert np.array_equal(local.cv_results_[key], remote.cv_results_[key]), key
    assert worker_threads == {1}, f"Dask workers run BLAS with {worker_threads} threads each"


def test_local_search_workers_cap_their_blas_threads():
    import joblib

    threads = joblib.Parallel(n_jobs=2)(joblib.delayed(_blas_threads)() for _ in range(2))
    assert max(threads) <= max(1, joblib.cpu_count() // 2), (
        f"each of 2 workers runs BLAS with {threads} threads"
    )
