"""Evaluation protocols on frozen features: the solver, L2 selection, few-shot draws, and the
evaluation task end to end (in-process and through the command line) on a small image folder."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import method_checks as mc
from configs import fewshot as fewshot_config
from configs import linear_eval
from ssl_jax import checkpoint
from ssl_jax.evaluate import fewshot, logistic, protocols

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blobs(n, d, classes, *, margin, seed):
    """Features of `classes` Gaussian clusters whose means are `margin` apart per axis."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    means = rng.normal(size=(classes, d)) * margin
    return (means[labels] + rng.normal(size=(n, d))).astype(np.float32), labels


def test_solver_reaches_the_optimum_of_the_regularised_objective():
    x, y = blobs(300, 6, 3, margin=0.7, seed=0)
    l2 = 0.05
    probe = logistic.fit_logistic_regression(x, y, 3, l2=l2, tolerance=1e-6)
    xs = (x - x.mean(0)) / x.std(0)

    def objective(p):  # the module docstring's formula, written out again
        logits = xs @ p["kernel"] + p["bias"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + l2 / 2 * jnp.sum(p["kernel"] ** 2)

    params = {"kernel": probe.kernel, "bias": probe.bias}
    grad = jax.grad(objective)(params)
    assert float(optax.tree.norm(grad)) < 1e-5
    # At the optimum: l2 * W = -dCE/dW, so W shrinks as l2 grows.
    stronger = logistic.fit_logistic_regression(x, y, 3, l2=10 * l2)
    assert float(jnp.linalg.norm(stronger.kernel)) < float(jnp.linalg.norm(probe.kernel))


def test_frozen_features_is_near_perfect_on_linearly_separable_features():
    x, y = blobs(1200, 16, 5, margin=4.0, seed=1)
    xt, yt = blobs(500, 16, 5, margin=4.0, seed=1)  # same means (same seed), new noise draws
    xt = xt + np.random.default_rng(2).normal(size=xt.shape).astype(np.float32) * 0.1
    out = logistic.frozen_features_linear(x, y, xt, yt, 5, l2_grid=(1e-4, 1e-2, 1.0))
    assert out["top1"] > 0.98 and out["top5"] == 1.0
    assert set(out["validation_top1"]) == {1e-4, 1e-2, 1.0}


def test_l2_selection_never_reads_the_test_labels():
    x, y = blobs(600, 8, 4, margin=0.5, seed=3)
    xt, yt = blobs(200, 8, 4, margin=0.5, seed=4)
    grid = (1e-5, 1e-3, 1e-1, 10.0)
    honest = logistic.frozen_features_linear(x, y, xt, yt, 4, l2_grid=grid)
    poisoned = logistic.frozen_features_linear(x, y, xt, (yt + 1) % 4, 4, l2_grid=grid)
    assert poisoned["l2"] == honest["l2"]
    assert poisoned["validation_top1"] == honest["validation_top1"]
    assert poisoned["top1"] != honest["top1"]  # the test labels do score the final fit


def test_holdout_split_is_a_seeded_partition_of_the_train_split():
    fit, held = logistic.holdout_split(1000, 0.1, seed=0)
    assert len(held) == 100 and len(fit) == 900
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(1000))
    np.testing.assert_array_equal(logistic.holdout_split(1000, 0.1, seed=0)[1], held)
    assert not np.array_equal(logistic.holdout_split(1000, 0.1, seed=1)[1], held)
    with pytest.raises(ValueError, match="holdout fraction"):
        logistic.holdout_split(1000, 1.0, seed=0)


def test_fewshot_draws_n_per_class_and_reports_mean_and_std_over_draws():
    x, y = blobs(400, 8, 4, margin=1.0, seed=5)
    xt, yt = blobs(200, 8, 4, margin=1.0, seed=5)
    out = fewshot.fewshot_linear(x, y, xt, yt, 4, shots=(1, 5), draws=3, seed=0)
    for n in (1, 5):
        ids = [np.array(i) for i in out[n]["train_ids"]]
        for draw in ids:
            assert np.bincount(y[draw], minlength=4).tolist() == [n] * 4
        assert len({tuple(d) for d in ids}) == 3  # the draws differ
        accs = out[n]["top1_per_draw"]
        assert out[n]["top1_mean"] == pytest.approx(np.mean(accs))
        assert out[n]["top1_std"] == pytest.approx(np.std(accs))
    assert out[5]["top1_mean"] > out[1]["top1_mean"]
    again = fewshot.fewshot_linear(x, y, xt, yt, 4, shots=(1, 5), draws=3, seed=0)
    assert again[5]["top1_per_draw"] == out[5]["top1_per_draw"]


# ------------------------------------------------ the evaluation task, on a small image folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ and test/ of 3 classes told apart by colour: 30 + 12 images per class, 16 px."""
    from PIL import Image

    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    for split, count in (("train", 30), ("test", 12)):
        for name, rgb in colours.items():
            os.makedirs(root / split / name)
            for i in range(count):
                noise = rng.integers(-40, 40, (16, 16, 3))
                pixels = np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return str(root)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return mc.random_export(str(tmp_path_factory.mktemp("pretrained") / "export"))


def eval_config(module, folder, export):
    config = module.get_config("runlocal")
    config.dataset = f"imagefolder:{folder}"
    config.pretrained = os.path.dirname(export)  # the workdir: its export/ is found
    config.eval_batch_size = 32
    config.protocols = ("knn", "frozen_features")  # `augmented` trains: its own test below
    return config


def test_linear_eval_writes_the_workdir_contract_and_a_rerun_reuses_the_features(
    folder, export, tmp_path, capsys
):
    config = eval_config(linear_eval, folder, export)
    workdir = str(tmp_path / "eval")
    results = protocols.run(config, workdir)
    for name in ("config.json", "metrics.jsonl", "results.json", "tensorboard", "features"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert results == json.load(open(os.path.join(workdir, "results.json")))
    assert (results["method"], results["backbone"], results["pretrain_epochs"]) == (
        "simclr", "resnet18 x0.125", 0.013)  # fmt: skip
    for key in ("knn_top1", "knn_top5", "frozen_features_top1", "frozen_features_top5"):
        assert 0 <= results[key] <= 1, key
    # Colour separates the classes, even through a random encoder.
    assert results["frozen_features_top1"] > 0.9
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["protocol"] for r in records] == ["knn", "frozen_features"]

    # As if killed after the train features were saved: the rerun reuses them, ends the same.
    os.remove(os.path.join(workdir, "results.json"))
    os.remove(os.path.join(workdir, "features", "test.npz"))
    capsys.readouterr()
    again = protocols.run(config, workdir)
    assert "reusing the features in" in capsys.readouterr().out
    assert {k: v for k, v in again.items() if k != "eval_seconds"} == {
        k: v for k, v in results.items() if k != "eval_seconds"
    }

    # The random-init baseline: same architecture, other weights, other features.
    config.random_init = True
    baseline = protocols.run(config, str(tmp_path / "random"))
    assert baseline["encoder"] == "random init" and baseline["knn_top1"] <= 1


def test_augmented_protocol_trains_a_linear_layer_on_the_frozen_encoder(folder, export, tmp_path):
    config = eval_config(linear_eval, folder, export)
    config.protocols = ("augmented",)
    workdir = str(tmp_path / "eval")
    results = protocols.run(config, workdir)
    assert not os.path.exists(os.path.join(workdir, "features"))  # it needs no cached features
    run = json.load(open(os.path.join(workdir, "augmented", "results.json")))
    assert results["augmented_top1"] == run["augmented_top1"] and results["augmented_steps"] == 4
    assert 0 <= results["augmented_top1"] <= results["augmented_top5"] <= 1
    trained = json.load(open(os.path.join(workdir, "augmented", "config.json")))
    assert (trained["frozen_encoder"], trained["model"]["width"], trained["image_size"]) == (
        True,
        0.125,
        16,
    )  # fmt: skip  (the export's architecture and resolution)
    # Frozen: the encoder exported after training is the pretrained one, bit for bit (its
    # BatchNorm statistics too), while the linear layer moved.
    _, before = checkpoint.load_encoder(export)
    _, after, _ = checkpoint.load_classifier(os.path.join(workdir, "augmented"))
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(
            {"params": after["params"]["backbone"], "batch_stats": after["batch_stats"]["backbone"]}
    ), strict=True):  # fmt: skip
        np.testing.assert_array_equal(x, y)
    assert np.abs(after["params"]["head"]["kernel"]).max() > 0
    # Killed after the linear layer's step-2 checkpoint, the same command resumes its run and
    # ends with the same numbers.
    resumed = str(tmp_path / "resumed")
    mc.copy_as_killed_after_step_2(os.path.join(workdir, "augmented"),
                                   os.path.join(resumed, "augmented"))  # fmt: skip
    again = protocols.run(config, resumed)
    mc.assert_resumed_with_the_same_losses(os.path.join(workdir, "augmented"),
                                           os.path.join(resumed, "augmented"))  # fmt: skip
    assert (again["augmented_top1"], again["augmented_top5"]) == (
        results["augmented_top1"], results["augmented_top5"])  # fmt: skip


def run_cli(*overrides, config="linear_eval", timeout=300):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")  # fmt: skip
    config_file = os.path.join(REPO, "configs", f"{config}.py")
    cmd = [sys.executable, "-m", "ssl_jax.main", f"--config={config_file}:runlocal", *overrides]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_fewshot_through_the_command_line(folder, export, tmp_path):
    result = run_cli(f"--workdir={tmp_path}", f"--config.pretrained={export}",
                     f"--config.dataset=imagefolder:{folder}", "--config.eval_batch_size=32",
                     config="fewshot")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "few-shot linear (2 draws" in result.stdout
    results = json.load(open(tmp_path / "results.json"))
    assert results["fewshot_1shot_labels"] == "1/class"
    assert 0 <= results["fewshot_5shot_top1"] <= 1 and results["fewshot_5shot_top1_std"] >= 0
    ids = json.load(open(tmp_path / "fewshot_train_ids.json"))
    assert [len(d) for d in ids["5"]] == [15, 15]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ((), "set --config.pretrained=PATH"),
        (("--config.pretrained=/nonexistent/run",), "is not a directory"),
        (("--config.pretrained=.", "--config.augmented.batch_size=0"), "batch_size=0 must be"),
        (("--config.pretrained=.", "--config.protocols=('knn','linear')"), "unknown protocol"),
    ],
)
def test_bad_evaluation_settings_are_one_line_errors(overrides, message, tmp_path):
    result = run_cli(f"--workdir={tmp_path / 'w'}", *overrides, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "w")  # nothing written for a run that cannot start


def test_every_preset_builds_an_evaluation_config():
    for preset in ("imagenet", "cifar10", "demo", "runlocal"):
        assert fewshot_config.get_config(preset).task == "evaluate"
        assert linear_eval.get_config(preset).protocols == ("knn", "frozen_features", "augmented")
