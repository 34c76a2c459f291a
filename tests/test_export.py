"""The exported encoder, and training on an unlabeled folder (in-process, 8 devices)."""

import os

import numpy as np

from configs import simclr
from ssl_jax import checkpoint, methods, step, train


def test_export_computes_the_trained_encoders_features(tmp_path):
    config = simclr.get_config("runlocal")
    config.total_steps = 2
    workdir = str(tmp_path)
    train.train_and_evaluate(config, workdir)

    apply_fn, variables = checkpoint.load_encoder(os.path.join(workdir, "export"))
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    features = np.asarray(apply_fn(variables, images))
    assert features.shape == (4, 8 * 8) and features.dtype == np.float32

    # The same encoder from the training checkpoint gives the same features.
    backbone = methods.get_method(config).network().backbone
    restored = checkpoint.manager(workdir, keep=3).restore(2)
    trained = {
        "params": restored["params"]["backbone"],
        "batch_stats": restored["batch_stats"]["backbone"],
    }
    expected = backbone.apply(trained, images, train=False)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    # Float pixels in 0..255 work too.
    np.testing.assert_allclose(apply_fn(variables, images.astype(np.float32)), features, rtol=1e-5)


def test_flat_unlabeled_folder_trains_and_skips_label_evaluation(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        pixels = rng.integers(0, 256, (20 + i % 5, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i}.{'png' if i % 2 else 'JPG'}")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")

    config = simclr.get_config("runlocal")
    config.dataset = f"imagefolder:{folder}"
    config.total_steps = 2
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["step"] == 2
    assert "no labels" in results["skipped"]
    assert "Evaluation skipped" in capsys.readouterr().out
    assert os.path.exists(tmp_path / "run" / "export" / "encoder.json")


def test_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    """A loss that turns NaN at step 3 stops the run there; checkpoint 2 stays, 4 is never
    written."""
    import jax.numpy as jnp
    import pytest

    from ssl_jax.errors import NonFiniteLossError

    real_step = step.train_step

    def step_going_nan_at_3(state, batch, **kwargs):
        new_state, metrics = real_step(state, batch, **kwargs)
        nan_from_3 = jnp.where(state.step + 1 >= 3, jnp.nan, 0.0)
        return new_state, {**metrics, "loss": metrics["loss"] + nan_from_3}

    monkeypatch.setattr(step, "train_step", step_going_nan_at_3)  # build_training uses it
    config = simclr.get_config("runlocal")
    config.total_steps = 6
    workdir = str(tmp_path)
    with pytest.raises(NonFiniteLossError, match="at step 3;.*last good checkpoint is step 2"):
        train.train_and_evaluate(config, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    assert not os.path.exists(os.path.join(workdir, "results.json"))
