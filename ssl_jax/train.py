"""The generic pretraining loop: one entry point, `train_and_evaluate(config, workdir)`.

Sections: workdir & config / mesh & input / model, method & optimiser / train state &
sharding / checkpoint restore / the train step / the loop / final evaluation & export.
The method plugs in through ssl_jax.methods (see methods/base.py); nothing here knows its name.
"""

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from ssl_jax import checkpoint, data, methods, optim, parallel
from ssl_jax.errors import NonFiniteLossError, UserError
from ssl_jax.evaluate.features import evaluate_encoder
from ssl_jax.evaluate.health import effective_rank, embedding_std
from ssl_jax.evaluate.online_probe import ProbeHead, probe_step
from ssl_jax.metrics_writer import MetricsWriter, progress_line


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # the method network's parameters (backbone + heads)
    batch_stats: Any
    opt_state: Any
    probe_params: Any  # online linear probe ({} for unlabeled data)
    probe_opt_state: Any
    extra: Any  # method state beside the parameters (EMA target, queue, ...)
    rng: jax.Array


def prepare_workdir(workdir: str) -> None:
    """Create the workdir and prove it is writable, before any work starts."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(
            f"workdir {workdir!r} cannot be created or written ({e.strerror or e}); "
            "pass a writable --workdir"
        ) from None


def total_steps(config, steps_per_epoch: int) -> int:
    return config.total_steps if config.total_steps > 0 else config.num_epochs * steps_per_epoch


def create_state(config, net, method, tx, probe_tx, num_classes, rng, sample_views):
    """Initial TrainState; run under jax.eval_shape for shapes, under jit for values."""
    init_rng, probe_rng, state_rng = jax.random.split(rng, 3)
    variables = net.init(init_rng, sample_views, train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    probe_params, probe_opt_state = {}, {}
    if num_classes:
        feature_dim = net.backbone.feature_dim
        probe_params = ProbeHead(num_classes).init(probe_rng, jnp.zeros((1, feature_dim)))
        probe_params = probe_params["params"]
        probe_opt_state = probe_tx.init(probe_params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        probe_params=probe_params,
        probe_opt_state=probe_opt_state,
        extra=method.init_extra(params),
        rng=state_rng,
    )


def loss_and_grads(state: TrainState, batch, *, net, method):
    """The method's loss on a GLOBAL batch and its gradient w.r.t. the network's parameters.

    Returns ((loss, (metrics, network outputs, new batch_stats)), grads).
    """
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        outputs, mutated = net.apply(
            {"params": params, "batch_stats": state.batch_stats},
            batch["views"],
            train=True,
            mutable=["batch_stats"],
        )
        loss, metrics = method.loss(outputs, state.extra, rng)
        return loss, (metrics, outputs, mutated["batch_stats"])

    return jax.value_and_grad(loss_fn, has_aux=True)(state.params)


def train_step(state: TrainState, batch, *, net, method, tx, probe_tx, num_classes, schedule):
    """One optimiser step on a GLOBAL batch: (state, batch) -> (state, metrics)."""
    (loss, (metrics, outputs, batch_stats)), grads = loss_and_grads(
        state, batch, net=net, method=method
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    extra = method.update_extra(state.extra, params, state.step)

    probe_params, probe_opt_state = state.probe_params, state.probe_opt_state
    if num_classes:
        batch_size = batch["label"].shape[0]
        probe_params, probe_opt_state, probe_metrics = probe_step(
            ProbeHead(num_classes),
            probe_tx,
            probe_params,
            probe_opt_state,
            outputs["features"][:batch_size],  # [B, D], first view
            batch["label"],
        )
        metrics = {**metrics, **probe_metrics}

    metrics = {
        **metrics,
        "loss": loss,
        "lr": schedule(state.step),
        "embedding_std": embedding_std(outputs["embedding"]),
        "effective_rank": effective_rank(outputs["embedding"]),
    }
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        probe_params=probe_params,
        probe_opt_state=probe_opt_state,
        extra=extra,
    )
    return new_state, metrics


@dataclasses.dataclass(frozen=True)
class Training:
    """Everything the loop needs to take steps, built the same way for the trainer, the tests
    and the benchmarks."""

    net: Any  # the method's network (backbone + heads)
    method: methods.Method
    init: Callable[[jax.Array], TrainState]  # rng -> initial state
    state_sharding: Any
    step_fn: Callable  # jitted (state, global batch) -> (state, metrics); state donated
    peak_lr: float


def build_training(config, mesh, *, num_classes: int, steps_per_epoch: int, num_steps: int):
    """The method's network, optimiser, state initialiser and the sharded, jitted train step."""
    method = methods.get_method(config)
    net = method.network()
    recipes = [config.augment[name] for name in _check_recipes(method, config)]
    sample_views = [jnp.zeros((2, r.size, r.size, 3), jnp.uint8) for r in recipes]
    abstract_params = jax.eval_shape(
        lambda: net.init(jax.random.PRNGKey(0), sample_views, train=False)["params"]
    )
    tx, schedule, peak_lr = optim.from_config(
        config, params=abstract_params, total_steps=num_steps, steps_per_epoch=steps_per_epoch
    )
    probe_tx = optax.adamw(config.probe.lr, weight_decay=config.probe.weight_decay)
    init = functools.partial(
        create_state, config, net, method, tx, probe_tx, num_classes, sample_views=sample_views
    )
    state_sharding = jax.tree.map(
        lambda _: parallel.replicated(mesh), jax.eval_shape(init, jax.random.PRNGKey(0))
    )
    step = functools.partial(
        train_step,
        net=net,
        method=method,
        tx=tx,
        probe_tx=probe_tx,
        num_classes=num_classes,
        schedule=schedule,
    )
    step_fn = jax.jit(
        step,
        in_shardings=(state_sharding, parallel.batch_sharded(mesh)),
        out_shardings=(state_sharding, parallel.replicated(mesh)),
        donate_argnums=0,
    )
    return Training(net, method, init, state_sharding, step_fn, peak_lr)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Pretrain `config.method` on `config.dataset`; resume from workdir when it has checkpoints."""
    # ---------------------------------------------------------------- mesh & input
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    method = methods.get_method(config)
    recipes = [config.augment[name] for name in _check_recipes(method, config)]
    train_source = data.get_source(config.dataset, "train", config.data_dir)
    test_source = data.get_source(config.dataset, "test", config.data_dir)
    steps_per_epoch = data.steps_per_epoch(train_source.num_examples, config.batch_size)
    num_steps = total_steps(config, steps_per_epoch)
    prepare_workdir(workdir)

    # ---------------------------------------------------------------- model, optimiser, step
    num_classes = train_source.num_classes
    setup = build_training(
        config, mesh, num_classes=num_classes, steps_per_epoch=steps_per_epoch, num_steps=num_steps
    )
    net, init, state_sharding = setup.net, setup.init, setup.state_sharding
    is_lead = jax.process_index() == 0
    if is_lead:  # only now: a config that cannot build a model leaves the workdir untouched
        _write_config(config, workdir)
    rng = jax.random.PRNGKey(config.seed)
    abstract_state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        jax.eval_shape(init, rng),
        state_sharding,
    )

    # ---------------------------------------------------------------- checkpoint restore
    mngr = checkpoint.manager(workdir, keep=config.keep_checkpoints)
    state = checkpoint.restore_latest(mngr, abstract_state)
    resumed = state is not None
    if not resumed:
        state = jax.jit(init, out_shardings=state_sharding)(rng)
    start_step = int(state.step)

    devices, per_device = mesh.devices.size, config.batch_size // mesh.devices.size
    print_lead = print if is_lead else (lambda *args, **kwargs: None)
    print_lead(
        f"{config.method} on {train_source.name} ({train_source.num_examples} images, "
        f"{num_classes or 'no'} classes) | {jax.device_count()} {jax.devices()[0].platform} "
        f"device(s), {jax.process_count()} host(s) | global batch {config.batch_size} = "
        f"{devices} x {per_device} per device | lr {setup.peak_lr:.4g} = base_lr {config.base_lr} "
        f"scaled {config.lr_scaling} | {num_steps} steps = {num_steps / steps_per_epoch:.1f} "
        f"epochs of {steps_per_epoch}" + (f" | resuming at step {start_step}" if resumed else ""),
        flush=True,
    )

    step_fn = setup.step_fn
    encoder = net.backbone
    encode = jax.jit(lambda variables, images: encoder.apply(variables, images, train=False))

    def encoder_variables(s):
        return {
            "params": s.params[method.encoder_name],
            "batch_stats": s.batch_stats[method.encoder_name],
        }

    def run_eval(s):
        return evaluate_encoder(
            encode,
            encoder_variables(s),
            train_source=train_source,
            test_source=test_source,
            config=config,
            mesh=mesh,
        )

    # ---------------------------------------------------------------- the loop
    writer = MetricsWriter(workdir, enabled=is_lead)
    if resumed:
        writer.write_event({"event": "resume", "step": start_step})
    batches = data.train_batches(
        train_source,
        recipes=recipes,
        global_batch=config.batch_size,
        seed=config.seed,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    last_saved = start_step if resumed else None
    pending = None  # (step, metrics) of the previous step, checked one step late
    window_start, window_steps, loop_start = time.time(), 0, time.time()

    def check_finite(step, metrics):
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
            kept = (
                f"the last good checkpoint is step {last_saved}"
                if last_saved
                else "no checkpoint was saved"
            )
            raise NonFiniteLossError(
                f"loss became {loss} at step {step}; stopping ({kept}). Lower base_lr, "
                "raise warmup_epochs or use dtype=float32."
            )

    for step in range(start_step, num_steps):
        batch = _global_batch(next(batches), mesh, num_classes)
        state, metrics = step_fn(state, batch)
        window_steps += 1
        if pending is not None:
            check_finite(*pending)
        done = step + 1  # steps completed; the numbering of the logs and checkpoints
        pending = (done, metrics)
        eval_due = config.eval_every_steps and done % config.eval_every_steps == 0
        eval_due = eval_due and done < num_steps  # the final evaluation follows the loop
        if done % config.log_every_steps == 0 or done == num_steps or eval_due:
            check_finite(*pending)
            now = time.time()
            images_per_sec = window_steps * config.batch_size / max(now - window_start, 1e-9)
            record = {
                "step": done,
                "epoch": round(done / steps_per_epoch, 3),
                **{k: float(v) for k, v in jax.device_get(metrics).items()},
                "images_per_sec": round(images_per_sec, 1),
            }
            if eval_due:
                record.update(run_eval(state))
            writer.write(record)
            if is_lead:
                eta = (num_steps - done) * (now - window_start) / window_steps
                print(progress_line(record, num_steps, steps_per_epoch, eta), flush=True)
            window_start, window_steps = time.time(), 0
        if done % config.checkpoint_every_steps == 0 or done == num_steps:
            check_finite(*pending)
            checkpoint.save(mngr, done, state)
            last_saved = done
    if pending is not None:
        check_finite(*pending)
    train_seconds = time.time() - loop_start

    # ---------------------------------------------------------------- final evaluation & export
    results = {"step": int(state.step), "train_seconds": round(train_seconds, 1)}
    results.update(run_eval(state))
    if config.eval_random_init:
        random_state = jax.jit(init, out_shardings=state_sharding)(rng)
        baseline = run_eval(random_state)
        results.update({f"random_init_{k}": v for k, v in baseline.items()})
    checkpoint.export_encoder(
        os.path.join(workdir, "export"),
        spec={
            "architecture": {
                "depth": encoder.depth,
                "width": encoder.width,
                "cifar_stem": encoder.cifar_stem,
                "dtype": str(jnp.dtype(encoder.dtype)),
            },
            "image_size": config.image_size,
            "feature_dim": encoder.feature_dim,
            "method": config.method,
            "step": int(state.step),
        },
        variables=encoder_variables(state),
    )
    if is_lead:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        writer.write({"step": int(state.step), **{k: v for k, v in results.items() if k != "step"}})
        print(results_summary(results, workdir), flush=True)
    writer.close()
    return results


def results_summary(results: dict, workdir: str) -> str:
    """The closing lines: what the encoder reached, beside a random encoder when measured."""
    if "knn_top1" not in results:
        return f"Evaluation skipped: {results.get('skipped')}. Encoder exported to {workdir}/export"
    lines = [f"Results after {results['step']} steps (test split, top-1):"]
    lines.append(f"  {'':22s}{'kNN (k=200)':>12s}{'linear':>10s}")
    lines.append(
        f"  {'pretrained encoder':22s}{results['knn_top1']:12.3f}{results['linear_top1']:10.3f}"
    )
    if "random_init_knn_top1" in results:
        lines.append(
            f"  {'random-init encoder':22s}{results['random_init_knn_top1']:12.3f}"
            f"{results['random_init_linear_top1']:10.3f}"
        )
    lines.append(f"Saved {workdir}/results.json; encoder exported to {workdir}/export")
    return "\n".join(lines)


def _global_batch(host_batch, mesh, num_classes):
    batch = {"views": host_batch["views"]}
    if num_classes:
        batch["label"] = host_batch["label"]
    return parallel.to_global(batch, mesh)


def _check_recipes(method, config) -> list[str]:
    names = method.view_recipes()
    missing = [n for n in names if n not in config.augment]
    if missing:
        raise UserError(
            f"view recipe(s) {missing} not in config.augment (has: {', '.join(config.augment)})"
        )
    return names


def _write_config(config, workdir: str) -> None:
    """config.json holds the resolved config; a different earlier one is kept beside it."""
    path = os.path.join(workdir, "config.json")
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if old != text:
            aside = os.path.join(workdir, f"config.{time.strftime('%Y%m%d-%H%M%S')}.json")
            os.replace(path, aside)
            logging.warning("The config differs from the run's earlier one; kept that as %s", aside)
    with open(path, "w") as f:
        f.write(text)
