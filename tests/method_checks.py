"""Checks every method's tests share: one jitted step on 1 and on 8 devices for the same global
batch, compiled once per (method, device count) and reused by all tests of a module."""

import functools
import importlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import checkpoint, parallel, train
from ssl_jax.methods import StepInputs

GLOBAL_BATCH = 16
NUM_CLASSES = 10
NUM_STEPS = 10
RTOL, ATOL = 1e-4, 1e-5  # float32 sums in another order; a wrong batch gives ~1e-1


def tiny_config(method: str, **overrides):
    """The method's runlocal preset at the tiny test shapes (width 0.125, 16 px, batch 16);
    "method:preset" picks another preset ("dino:runlocal_vit")."""
    config = runlocal_config(method, **overrides)
    config.batch_size = GLOBAL_BATCH
    return config


def runlocal_config(method: str, **overrides):
    """configs/<method>.py:runlocal ("method:preset": another preset) with `overrides`, whose
    dotted keys ("model.name") reach into blocks."""
    name, _, preset = method.partition(":")
    config = importlib.import_module(f"configs.{name}").get_config(preset or "runlocal")
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@functools.cache
def setup(method: str, num_devices: int, overrides: tuple = ()):
    """(mesh, training, initial state, step that keeps its input) for a method on n devices."""
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    config = tiny_config(method, **dict(overrides))
    training = train.build_training(
        config, mesh, num_classes=NUM_CLASSES, steps_per_epoch=5, num_steps=NUM_STEPS
    )
    state = training.initial_state(jax.random.PRNGKey(0))
    # The trainer's step donates the state; tests reuse states, so copy before each call.
    step = lambda s, b: training.step_fn(jax.tree.map(jnp.copy, s), b)  # noqa: E731
    return mesh, training, state, step


def batch(mesh, num_views: int = 2, size: int = 16, sizes=None):
    """A global batch of random views: `num_views` of `size` px, or one per entry of `sizes`."""
    rng = np.random.default_rng(0)
    sizes = sizes or [size] * num_views
    host = {
        "views": [rng.integers(0, 256, (GLOBAL_BATCH, s, s, 3), dtype=np.uint8) for s in sizes],
        "label": rng.integers(0, NUM_CLASSES, (GLOBAL_BATCH,), dtype=np.int32),
    }
    return parallel.to_global(host, mesh)


def grads(training, state, global_batch, mesh=None):
    fn = functools.partial(
        train.loss_and_grads, net=training.net, method=training.method, mesh=mesh
    )
    return jax.jit(lambda s, b: fn(s, b)[1])(state, global_batch)


@functools.cache
def two_steps(method: str, num_devices: int, overrides: tuple = ()) -> dict:
    """Initial state, gradients, the states after 1 and 2 steps and the metrics, on the host."""
    mesh, training, state, step = setup(method, num_devices, overrides)
    b = batch(mesh, sizes=[r.size for r in training.recipes])
    g = grads(training, state, b, mesh)
    state1, metrics1 = step(state, b)
    state2, metrics2 = step(state1, b)  # sees updated BN statistics, momentum, EMA and queue
    return jax.device_get(
        dict(
            state0=state,
            grads=g,
            state1=state1,
            state2=state2,
            metrics1=metrics1,
            metrics2=metrics2,
        )  # fmt: skip
    )


def assert_trees_close(a, b, rtol=RTOL, atol=ATOL):
    """Leaf by leaf, with float32 noise judged against each leaf's largest entry.

    Summing in another order moves entries by up to ~2e-5 of their leaf's largest entry;
    entries that nearly cancel (0.01 in a gradient leaf whose largest entry is 20) would miss a
    per-entry rtol. A wrong batch (per-device BN or negatives) moves whole leaves by ~1e-1.
    """
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        scale = float(np.max(np.abs(y), initial=0.0))
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol + rtol * scale)


def assert_ema_steps(run, tau_of_step):
    """After each step: target = tau * old target + (1 - tau) * NEW online parameters."""
    for before, after, step in (("state0", "state1", 0), ("state1", "state2", 1)):
        tau = np.float32(tau_of_step(step))
        old = run[before].extra["target"]["params"]
        online = {k: run[after].params[k] for k in old}
        expected = jax.tree.map(
            lambda t, o, tau=tau: tau * t + (np.float32(1) - tau) * o, old, online
        )
        assert_trees_close(run[after].extra["target"]["params"], expected, rtol=1e-6, atol=1e-8)
        # The check has power: "no update" would fail it. The projector moves everywhere; inside
        # residual blocks the zero-initialised last BN scale gives zero gradients at step 0.
        moved = {
            jax.tree_util.keystr(path): not np.allclose(e, t, rtol=1e-6, atol=1e-8)
            for (path, e), t in zip(
                jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(old), strict=True
            )
        }
        assert all(v for k, v in moved.items() if k.startswith("['projector']")), moved
        assert sum(moved.values()) >= len(moved) // 3, (step, moved)


def assert_eight_devices_equal_one(method: str, overrides: tuple = ()) -> None:
    """Loss, metrics, gradients, parameters, BN statistics, optimiser and extra state."""
    one, eight = two_steps(method, 1, overrides), two_steps(method, 8, overrides)
    for key in one["metrics2"]:
        np.testing.assert_allclose(
            eight["metrics2"][key], one["metrics2"][key], rtol=1e-5, atol=1e-6, err_msg=key
        )
    assert_trees_close(eight["grads"], one["grads"])
    for name in ("params", "batch_stats", "opt_state", "extra"):
        assert_trees_close(getattr(eight["state2"], name), getattr(one["state2"], name))


def loss_gradient_wrt(method: str, wrt: str):
    """d loss / d (extra | outputs) for one batch, on 1 device: what stop_gradient must zero."""
    mesh, training, state, _ = setup(method, 1)
    b = batch(mesh, len(training.recipes))
    net, m = training.net, training.method

    def apply_target(variables, views):
        outputs, mutated = net.apply(
            variables, views, train=True, method="target", mutable=["batch_stats"]
        )
        return jax.lax.stop_gradient(outputs), mutated["batch_stats"]

    def outputs_of(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        return net.apply(variables, b["views"], train=True, mutable=["batch_stats"])[0]

    def loss(outputs, extra):
        inputs = StepInputs(b["views"], extra, jax.random.PRNGKey(0), state.step, apply_target)
        return m.loss(outputs, inputs)[0]

    outputs = outputs_of(state.params)
    if wrt == "extra":
        # allow_int: integer state (a queue pointer) gets float0 zeros.
        return jax.grad(lambda e: loss(outputs, e), allow_int=True)(state.extra)
    return jax.grad(lambda o: loss(o, state.extra))(outputs)


# ------------------------------------------------------------------ whole runs, end to end


def run_locally(method: str, workdir: str, **overrides) -> dict:
    """train_and_evaluate of configs/<method>.py:runlocal (runlocal_config) in this process: the
    command line's code path after flag parsing (tests/test_train.py runs the command line)."""
    return train.train_and_evaluate(runlocal_config(method, **overrides), workdir)


def random_export(path: str, *, width: float = 0.125, image_size: int = 16) -> str:
    """A ResNet-18 encoder exported as a pretraining run exports it (random weights)."""
    from ssl_jax.models import ResNet

    arch = {"depth": 18, "width": width, "cifar_stem": True, "dtype": "float32"}
    images = jnp.zeros((1, image_size, image_size, 3))
    variables = ResNet(**arch).init(jax.random.key(7), images, train=False)
    spec = {"architecture": arch, "image_size": image_size, "feature_dim": int(512 * width),
            "method": "simclr", "dataset": "demo", "step": 4, "epochs": 0.013}  # fmt: skip
    checkpoint.export_encoder(path, spec=spec, variables=variables)
    return path


def losses_by_step(workdir: str) -> dict[int, float]:
    """The last logged loss for each step (a resumed run re-logs the steps it redoes)."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if "loss" in record:
                out[record["step"]] = record["loss"]
    return out


def assert_resume_reproduces_losses(method: str, tmp_path, **overrides) -> str:
    """Run 4 steps (checkpoints at 2 and 4); then, as if killed after the step-2 checkpoint,
    drop everything after it and rerun: the resumed run must log the same losses at steps 3-4.
    Returns the uninterrupted workdir (its export is the trained encoder)."""
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    run_locally(method, full, **overrides)
    copy_as_killed_after_step_2(full, resumed)
    run_locally(method, resumed, **overrides)
    assert_resumed_with_the_same_losses(full, resumed)
    return full


def copy_as_killed_after_step_2(full: str, resumed: str) -> None:
    """Copies the finished 4-step run `full` to `resumed` as a kill after the step-2 checkpoint
    would have left it: no step-4 checkpoint, export or results, steps 3-4 not yet logged."""
    shutil.copytree(full, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))
    shutil.rmtree(os.path.join(resumed, "export"))
    os.remove(os.path.join(resumed, "results.json"))
    with open(os.path.join(resumed, "metrics.jsonl")) as f:  # the log as of the kill
        kept = [line for line in f if '"step": 3' not in line and '"step": 4' not in line]
    with open(os.path.join(resumed, "metrics.jsonl"), "w") as f:
        f.writelines(kept)


def assert_resumed_with_the_same_losses(full: str, resumed: str) -> None:
    """`resumed` (rerun after copy_as_killed_after_step_2) resumed at step 2 and logged the
    uninterrupted run's losses at steps 3-4."""
    with open(os.path.join(resumed, "metrics.jsonl")) as f:
        assert {"event": "resume", "step": 2} in [json.loads(line) for line in f]
    a, b = losses_by_step(full), losses_by_step(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    np.testing.assert_allclose([b[s] for s in (3, 4)], [a[s] for s in (3, 4)], rtol=1e-5)
