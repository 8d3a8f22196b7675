"""The paper's circles models: parameter counts, and short training runs that must lower the loss."""

import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ode_nets.config import load_config
from ode_nets.data import batch_indices
from ode_nets.errors import ConfigError
from ode_nets.losses import cross_entropy, logit_level, smoothness
from ode_nets.models import count_parameters, project_parameters
from ode_nets.build import build_run, fit_run, prepare_folder
from ode_nets.training import Objective

CONFIGS = Path(__file__).parent.parent / "configs"
CIRCLES_CFG = CONFIGS / "circles_model2.yaml"


@pytest.mark.parametrize("name,expected", [("circles_model1", 601), ("circles_model2", 240)])
def test_paper_parameter_counts(name, expected, tmp_path):
    run = build_run(load_config(CONFIGS / f"{name}.yaml"), tmp_path)
    assert count_parameters(run.model) == expected


def test_all_parameters_zero_initialised(tmp_path):
    run = build_run(load_config(CONFIGS / "circles_model1.yaml"), tmp_path)
    leaves = jax.tree_util.tree_leaves(run.model)
    assert all(np.all(np.asarray(leaf) == 0) for leaf in leaves if hasattr(leaf, "shape"))


def test_smoothness_is_eq113(tmp_path):
    cfg = load_config(CONFIGS / "circles_model2.yaml", ["model.init=normal"])
    field = build_run(cfg, tmp_path).model.field
    w, b = np.asarray(field.w.values), np.asarray(field.b.values)
    expected = 0.5 * sum(np.sum((p[l] - p[l - 1]) ** 2) for p in (w, b) for l in range(1, len(p)))
    np.testing.assert_allclose(float(smoothness(field)), expected, rtol=1e-5)


def test_label_smoothing_is_cross_entropy_against_smoothed_targets():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], np.float32)
    labels = np.array([0, 2])
    eps = 0.3
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = (1 - eps) * np.eye(3)[labels] + eps / 3
    expected = -(targets * log_p).sum(-1).mean()
    np.testing.assert_allclose(cross_entropy(logits, labels, label_smoothing=eps), expected, rtol=1e-6)
    np.testing.assert_allclose(cross_entropy(logits, labels), -log_p[[0, 1], labels].mean(), rtol=1e-6)
    # the smoothed loss is minimal at a finite margin log(1 + K (1 - eps) / eps), not at infinity
    margins = np.linspace(0.0, 20.0, 2001, dtype=np.float32)
    losses = [float(cross_entropy(np.array([[m, 0.0, 0.0]]), np.array([0]), label_smoothing=eps)) for m in margins]
    np.testing.assert_allclose(margins[int(np.argmin(losses))], np.log(1 + 3 * (1 - eps) / eps), atol=0.01)


def test_logit_penalty_bounds_the_level_that_softmax_ignores():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], np.float32)
    labels, mask = np.array([0, 2]), np.array([1.0, 0.0], np.float32)
    lse = np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(logit_level(logits), np.mean(lse ** 2), rtol=1e-6)
    np.testing.assert_allclose(logit_level(logits, mask), lse[0] ** 2, rtol=1e-6)  # padded examples ignored
    # shifting every logit by c leaves the cross entropy unchanged but not the penalty, which is minimal
    # where logsumexp = 0, i.e. at the shift c = -logsumexp(logits)
    shifts = np.linspace(-5.0, 5.0, 1001, dtype=np.float32)
    ce = [float(cross_entropy(logits + c, labels)) for c in (-5.0, 0.0, 5.0)]
    np.testing.assert_allclose(ce, ce[1], rtol=1e-5)
    level = [float(logit_level(logits[:1] + c)) for c in shifts]
    np.testing.assert_allclose(shifts[int(np.argmin(level))], -lse[0], atol=0.01)


def test_loss_adds_the_logit_penalty_and_logs_it(tmp_path):
    run = build_run(load_config(CIRCLES_CFG, ["model.init=normal"]), tmp_path)
    x, y, mask = run.dataset.train.x[:8], run.dataset.train.y[:8], np.ones(8, np.float32)
    plain, aux = Objective(smoothness=1.0)(run.model, x, y, mask)
    penalised, aux_p = Objective(1.0, 0.0, 0.5)(run.model, x, y, mask)
    assert "logit_level" not in aux and float(aux_p["logit_level"]) > 0
    np.testing.assert_allclose(float(penalised), float(plain) + 0.5 * float(logit_level(run.model(x), mask)), rtol=1e-6)


def test_batches_cover_every_example_once_and_pad_the_last():
    seen = []
    for idx, mask in batch_indices(10, 4, jax.random.PRNGKey(0)):
        assert len(idx) == 4
        seen.extend(idx[mask > 0].tolist())
    assert sorted(seen) == list(range(10))


def test_input_noise_has_the_asked_spread_and_is_reproducible():
    from ode_nets.data import add_input_noise

    x = np.zeros((4000, 2), np.float32)
    noisy = np.asarray(add_input_noise(x, 0.2, jax.random.PRNGKey(3)))
    assert noisy.dtype == np.float32 and abs(noisy.mean()) < 0.01 and noisy.std() == pytest.approx(0.2, rel=0.03)
    assert np.array_equal(noisy, np.asarray(add_input_noise(x, 0.2, jax.random.PRNGKey(3))))
    assert not np.array_equal(noisy, np.asarray(add_input_noise(x, 0.2, jax.random.PRNGKey(4))))


def test_random_crop_is_a_zero_filled_shift_of_at_most_padding_pixels():
    """train.random_crop = p: every image is its original moved by (dy, dx) in [-p, p]^2, zeros shifted in; the
    shifts are reproducible, vary over the batch, and one process's rows get their rows of the whole batch's crop."""
    from ode_nets.data import random_crop

    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (64, 2, 9, 7)), np.float32)
    out = np.asarray(random_crop(x, 3, jax.random.PRNGKey(1)))
    assert out.shape == x.shape and np.array_equal(out, np.asarray(random_crop(x, 3, jax.random.PRNGKey(1))))
    padded = np.pad(x, [(0, 0), (0, 0), (3, 3), (3, 3)])
    shifts = set()
    for image, window in zip(out, padded):
        matches = [(dy, dx) for dy in range(7) for dx in range(7)
                   if np.array_equal(image, window[:, dy:dy + 9, dx:dx + 7])]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 20  # 49 possible shifts, 64 images
    assert np.array_equal(np.asarray(random_crop(x, 0, jax.random.PRNGKey(1))), x)
    rows = slice(16, 32)
    assert np.array_equal(np.asarray(random_crop(x[rows], 3, jax.random.PRNGKey(1), rows, 64)), out[rows])


def test_random_crop_of_standardized_images_shifts_in_black_pixels():
    """With data.standardize the pixels shifted in are the standardized black, -mean / std (the dataset's
    `background`), not 0 (the mean pixel): cropping commutes with standardizing."""
    from ode_nets.data import Dataset, Split, random_crop, standardize

    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (8, 1, 9, 9)), np.float32) ** 4
    y = np.zeros(8, np.int32)
    raw = Dataset(Split(x, y), Split(x, y), num_classes=2, input_range=(0.0, 1.0))
    scaled = standardize(raw)
    mean, std = float(np.mean(x)), float(np.std(x))
    assert scaled.background == pytest.approx(-mean / std) and scaled.background < -0.5
    key = jax.random.PRNGKey(3)
    crop_then_scale = (np.asarray(random_crop(x, 3, key, fill=raw.background)) - mean) / std
    scale_then_crop = np.asarray(random_crop(scaled.train.x, 3, key, fill=scaled.background))
    np.testing.assert_allclose(scale_then_crop, crop_then_scale, rtol=1e-5, atol=1e-5)


def test_random_crop_on_vectors_is_refused():
    from ode_nets.training.options import TrainOptions

    with pytest.raises(ConfigError, match=r"train\.random_crop.*\(2,\)"):
        TrainOptions(random_crop=4).check(100, (2,))
    TrainOptions(random_crop=4).check(100, (1, 28, 28))


def test_training_with_input_noise_is_deterministic_and_differs_from_clean(tmp_path):
    """train.input_noise perturbs the inputs of every step with keys from the seed: same seed, same model."""
    def train(name: str, noise: float):
        cfg = load_config(CIRCLES_CFG, ["train.epochs=2", f"train.input_noise={noise}"])
        prepare_folder(tmp_path / name, cfg, overwrite=False, resume=False)
        fit_run(build_run(cfg, tmp_path / name), progress=False)
        return eqx.tree_deserialise_leaves(tmp_path / name / "model.eqx", build_run(cfg, tmp_path / "x").model)

    noisy, again, clean = train("a", 0.2), train("b", 0.2), train("c", 0.0)
    assert eqx.tree_equal(noisy, again)
    assert not np.allclose(np.asarray(noisy.field.w.values), np.asarray(clean.field.w.values))


@pytest.mark.parametrize("strategy,solver", [("discretize_then_optimize", "euler"),
                                             ("optimize_then_discretize", "tsit5")])
def test_short_training_lowers_the_loss(tmp_path, strategy, solver):
    cfg = load_config(CONFIGS / "circles_model2_sgd.yaml",
                      ["train.epochs=12", "train.log_every=5", "optim.schedule=constant", "optim.learning_rate=0.2",
                       f"gradient.strategy={strategy}", f"solver.method={solver}"])
    prepare_folder(tmp_path / "run", cfg, overwrite=False, resume=False)
    results = fit_run(build_run(cfg, tmp_path / "run"), progress=False)
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    # zero init: every logit is 0, so the initial loss is exactly log 2
    assert evals[-1]["train_loss"] < 0.9 * np.log(2)
    assert results["parameters"] == 240
    assert (tmp_path / "run" / "model.eqx").is_file() and (tmp_path / "run" / "results.json").is_file()


def test_learned_gamma_is_kept_nonnegative(tmp_path):
    """An update that would make gamma~ negative (cubic growth, finite-time blow-up) stops at gamma~ = 0."""
    import equinox as eqx
    import jax.numpy as jnp
    import optax

    from ode_nets.training import train_step

    run = build_run(load_config(CONFIGS / "circles_model1.yaml", ["model.gamma=0.3"]), tmp_path)
    push_down = optax.stateless(lambda updates, params: jax.tree_util.tree_map(lambda u: -jnp.ones_like(u), updates))
    x, y = jnp.asarray(run.dataset.train.x[:8]), jnp.asarray(run.dataset.train.y[:8])
    model, _, metrics = train_step(push_down, run.model, push_down.init(None), x, y, jnp.ones(8), Objective(1.0))
    assert bool(metrics["ok"]) and float(model.field.gamma) == 0.0
    assert np.all(np.asarray(model.field.w.values) == -1.0)  # the other parameters took the full step
    fixed = build_run(load_config(CONFIGS / "circles_model2.yaml"), tmp_path / "fixed").model
    assert eqx.tree_equal(project_parameters(fixed), fixed)  # a fixed gamma (a float) is not touched


def test_eval_train_examples_limits_the_train_metrics(tmp_path):
    """train.eval_train_examples: per-epoch train metrics on the first N examples, equal to evaluating them directly."""
    from ode_nets.data import Split
    from ode_nets.training import split_metrics, evaluate

    cfg = load_config(CIRCLES_CFG, ["train.eval_train_examples=7", "model.init=normal"])
    run = build_run(cfg, tmp_path)
    metrics = split_metrics(run.model, run.dataset, cfg.train.eval_batch_size, cfg.train.eval_train_examples)
    first = evaluate(run.model, Split(run.dataset.train.x[:7], run.dataset.train.y[:7]), 1000)
    assert metrics["train_loss"] == pytest.approx(first["loss"]) and metrics["train_acc"] == pytest.approx(first["acc"])
    assert metrics["train_acc"] * 7 == pytest.approx(round(metrics["train_acc"] * 7))  # a multiple of 1/7
    everything = evaluate(run.model, run.dataset.train, 1000)
    assert metrics["train_loss"] != pytest.approx(everything["loss"])


def test_depth_is_a_loop_not_unrolled(tmp_path):
    """The traced training loss has the same size for L = 10 and L = 200: layers are a lax loop
    inside diffrax, so compile time does not grow with depth."""
    import equinox as eqx

    sizes = []
    for layers in (10, 200):
        run = build_run(load_config(CIRCLES_CFG, [f"model.layers={layers}"]), tmp_path)
        x, y = run.dataset.train.x[:8], run.dataset.train.y[:8]
        grad = eqx.filter_grad(lambda m: Objective(1.0)(m, x, y, np.ones(8, np.float32))[0])
        sizes.append(len(str(jax.make_jaxpr(grad)(run.model))))
    assert sizes[1] <= 1.05 * sizes[0]


class _OverflowingNet(eqx.Module):
    """Logits (x0, -x0), NaN where x0 > 5: stands in for a model whose explicit solve overflowed."""

    def __call__(self, x):
        logits = jnp.concatenate([x[:, :1], -x[:, :1]], axis=-1)
        return jnp.where(x[:, :1] > 5, jnp.nan, logits)


def test_nonfinite_outputs_count_as_errors_not_as_class_0():
    from ode_nets.data import Split
    from ode_nets.losses import accuracy
    from ode_nets.training import evaluate, evaluate_split

    x = np.array([[1.0, 0.0], [-1.0, 0.0], [9.0, 0.0], [7.0, 0.0]], np.float32)
    y = np.array([0, 1, 0, 1], np.int32)  # rows 3 and 4 overflow; argmax of a NaN row would say class 0
    assert float(accuracy(_OverflowingNet()(jnp.asarray(x)), jnp.asarray(y))) == 0.5
    metrics = evaluate(_OverflowingNet(), Split(x, y), 3)  # batches of 3 with padding: the mask is respected
    assert metrics["acc"] == 0.5 and metrics["non_finite"] == 2
    finite_losses = optax.softmax_cross_entropy_with_integer_labels(jnp.array([[1.0, -1.0], [-1.0, 1.0]]), y[:2])
    assert metrics["loss"] == pytest.approx(float(jnp.mean(finite_losses)))
    padded = evaluate(_OverflowingNet(), Split(x[[2, 0, 3]], y[[2, 0, 3]]), 2)  # the pad repeats the overflowing row
    assert padded["non_finite"] == 2 and padded["loss"] == pytest.approx(float(finite_losses[0]))
    assert np.isnan(evaluate(_OverflowingNet(), Split(x[2:], y[2:]), 2)["loss"])
    result = evaluate_split(_OverflowingNet(), Split(x, y), 2)
    assert result["accuracy"] == 0.5 and result["non_finite"] == 2 and result["n"] == 4
    np.testing.assert_array_equal(result["confusion"], [[1, 0], [0, 1]])


def test_bayes_radius_is_the_best_circle():
    """The Bayes boundary of the circles set: the midpoint 1.5 for vanishing noise, and on a large sample no
    nearby radius classifies better (equal radial likelihoods of the two Rice densities)."""
    from ode_nets.data.circles import bayes_radius, circle_accuracy, make_circles

    assert bayes_radius(1e-3) == pytest.approx(1.5, abs=1e-4)
    r_star = bayes_radius(0.2)
    assert 1.5 < r_star < 1.53  # noise spreads the outer ring over a larger circumference: boundary moves out
    x, y = make_circles(jax.random.PRNGKey(0), 400_000, noise=0.2)
    radius = np.linalg.norm(x, axis=1)
    best = circle_accuracy(x, y, r_star)
    for r in (r_star - 0.05, r_star + 0.05):
        assert circle_accuracy(x, y, r) < best
    assert best == pytest.approx(np.mean((radius > r_star) == y))


def test_boundary_radii_of_a_circle_and_of_an_ellipse():
    """`training.boundary_radii` finds where the prediction turns to class 1 along each ray."""
    from ode_nets.training import boundary_radii

    class Ring(eqx.Module):
        scale: jax.Array  # class 1 where (x/a)^2 + y^2 > 1.5^2

        def __call__(self, x):
            r = jnp.sqrt((x[:, 0] / self.scale) ** 2 + x[:, 1] ** 2)
            return jnp.stack([1.5 - r, r - 1.5], axis=-1)

    radii = np.linspace(0.3, 3.0, 2701)
    circle = boundary_radii(Ring(jnp.array(1.0)), n_angles=8, radii=radii)
    np.testing.assert_allclose(circle, 1.5, atol=2e-3)
    ellipse = boundary_radii(Ring(jnp.array(1.2)), n_angles=4, radii=radii)  # rays at 0, 90, 180, 270 degrees
    np.testing.assert_allclose(ellipse, [1.8, 1.5, 1.8, 1.5], atol=2e-3)


def test_mnist_odenet_config_carries_chens_schedule_and_crops_to_training():
    """configs/mnist_odenet.yaml: Chen et al.'s lr drops at epochs 60, 100, 140 of 160 and 4-pixel random crops
    reach `fit`'s options and the optimizer (its first update from a state whose step count is set: lr x gradient)."""
    from ode_nets.build import build_optimizer, build_train_options

    cfg = load_config(CONFIGS / "mnist_odenet.yaml")
    assert build_train_options(cfg).random_crop == 4
    per_epoch, grads = 469, jnp.ones(1)
    opt = build_optimizer(cfg.optim, 160 * per_epoch)

    def at_step(state, n: int):
        """`state` with its step count (the int32 leaf, the schedule's count) set to `n`."""
        return jax.tree_util.tree_map(lambda leaf: jnp.full_like(leaf, n) if leaf.dtype == jnp.int32 else leaf, state)

    for epoch, rate in [(0, 0.1), (59.99, 0.1), (60, 0.01), (100, 0.001), (140, 1e-4)]:
        updates, _ = opt.update(grads, at_step(opt.init(grads), int(epoch * per_epoch)), grads)
        assert -float(updates[0]) == pytest.approx(rate, rel=1e-5), epoch
