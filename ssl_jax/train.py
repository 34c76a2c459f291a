"""The generic pretraining loop: one entry point, `train_and_evaluate(config, workdir)`.

It reads top to bottom in three stages, each a function below:
  1. `set_up`: mesh, data sources, the method, its network, optimiser and jitted step, the
     workdir, and the train state (restored from the newest good checkpoint, or fresh);
  2. `run_loop`: steps, logging, evaluation during training, checkpoints, non-finite checks;
  3. `finish`: final evaluation (and the random-init baseline), export, results.json.
The method plugs in through ssl_jax.methods (see methods/base.py); nothing here knows its name.
"""

import contextlib
import dataclasses
import functools
import json
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from ssl_jax import (
    checkpoint,
    compilation_cache,
    data,
    fileio,
    methods,
    models,
    parallel,
    preemption,
    run_lock,
    torch_export,
)
from ssl_jax import workdir as workdir_lib
from ssl_jax.data import subsets
from ssl_jax.errors import CheckpointWriteError, NonFiniteLossError, Preempted
from ssl_jax.evaluate.classifier import evaluate_classifier
from ssl_jax.evaluate.features import evaluate_encoder
from ssl_jax.evaluate.health import CollapseMonitor
from ssl_jax.metrics_writer import MetricsWriter, progress_line
from ssl_jax.step import (  # noqa: F401  (re-exported: the step's pieces, for tests and tools)
    Training,
    TrainState,
    build_training,
    check_recipes,
    create_state,
    loss_and_grads,
    train_step,
)

# ==================================================================== 1. set-up


@dataclasses.dataclass
class Run:
    """One pretraining run: what set_up built and the loop and the end use."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Any
    training: Training
    train_source: Any
    test_source: Any
    steps_per_epoch: int
    num_steps: int
    rng: jax.Array
    resumed: bool
    mngr: Any
    is_lead: bool
    lock: run_lock.RunLock

    @property
    def encoder(self):
        return self.training.net.backbone

    def encoder_variables(self, state: TrainState) -> dict:
        return self.training.method.encoder_variables(state)

    @functools.cached_property
    def encode(self):
        encoder = self.encoder
        return jax.jit(lambda variables, images: encoder.apply(variables, images, train=False))

    @functools.cached_property
    def predict(self):
        net = self.training.net
        return jax.jit(lambda variables, images: net.apply(variables, [images])["logits"])

    def evaluate(self, state: TrainState) -> dict:
        if self.training.method.has_classifier:
            return evaluate_classifier(
                self.predict,
                {"params": state.params, "batch_stats": state.batch_stats},
                test_source=self.test_source,
                config=self.config,
                mesh=self.mesh,
                name=self.training.method.result_name,
            )
        return evaluate_encoder(
            self.encode,
            self.encoder_variables(state),
            train_source=self.train_source,
            test_source=self.test_source,
            config=self.config,
            mesh=self.mesh,
        )

    def print(self, *args) -> None:
        if self.is_lead:
            print(*args, flush=True)


def set_up(
    config: ml_collections.ConfigDict, workdir: str, cleanup: contextlib.ExitStack
) -> tuple[Run, TrainState]:
    """Everything before the first step. User errors surface here, before any config.json or
    checkpoint is written (the workdir and its lock come first, before the data is loaded).

    `cleanup` releases the workdir's lock however the run ends (finished, failed, preempted).
    """
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    method = methods.get_method(config)
    check_recipes(method, config)  # bad method settings fail before any work
    subset_file = config.get("label_subset_file", "")  # a list of the labelled images' names
    if subset_file:  # a bad list fails now, not after the whole train split has been loaded
        subsets.read_name_list(subset_file)
    workdir_lib.prepare(workdir)
    # One run per workdir, checked before the data is loaded: process 0 holds the lock for every
    # host of the run, and every host stops if it cannot.
    lock = cleanup.enter_context(
        run_lock.acquire_on_all_hosts(
            workdir,
            stale_after_s=config.get(run_lock.CONFIG_KEY, run_lock.DEFAULT_STALE_AFTER_S),
        )
    )
    train_source = data.get_run_source(config, "train", workdir, file_names=bool(subset_file))
    test_source = data.get_run_source(config, "test", workdir)
    subset_ids = subset_facts = None
    # Train on a labelled subset (fine-tuning: 1%, 10%), drawn or listed in subset_file.
    if config.get("label_fraction", 1.0) < 1 or subset_file:
        train_source, subset_ids, subset_facts = subsets.labelled_train_subset(
            train_source,
            fraction=config.label_fraction,
            seed=config.seed,
            workdir=workdir,
            subset_file=subset_file,
        )
    train_source = method.train_source(train_source)
    steps_per_epoch = data.steps_per_epoch(train_source.num_examples, config.batch_size)
    num_steps = total_steps(config, steps_per_epoch)
    compilation_cache.use(config.get("compilation_cache_dir", ""), workdir)  # before any compile
    training = build_training(
        config,
        mesh,
        num_classes=train_source.num_classes,
        steps_per_epoch=steps_per_epoch,
        num_steps=num_steps,
    )
    is_lead = jax.process_index() == 0
    if is_lead:  # only now: a config that cannot build a model leaves the workdir untouched
        workdir_lib.write_config(config, workdir)
        if subset_facts is not None:
            path = fileio.join(workdir, subsets.TRAIN_SUBSET_FILE)
            subsets.save_subset(path, subset_ids, **subset_facts)

    rng = jax.random.PRNGKey(config.seed)
    abstract_state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        jax.eval_shape(training.init, rng),
        training.state_sharding,
    )
    mngr = checkpoint.manager(workdir, keep=config.keep_checkpoints)
    state = checkpoint.restore_latest(mngr, abstract_state)
    resumed = state is not None
    if not resumed:  # a fresh state, with the method's pretrained parts (fine-tuning) loaded
        state = training.initial_state(rng)
        state = jax.device_put(training.method.load_pretrained(state), training.state_sharding)
    run = Run(config, workdir, mesh, training, train_source, test_source, steps_per_epoch,
              num_steps, rng, resumed, mngr, is_lead, lock)  # fmt: skip

    devices, per_device = mesh.devices.size, config.batch_size // mesh.devices.size
    backbone = models.describe(models.architecture_spec(run.encoder))
    backbone_params = models.param_count(state.params[training.method.encoder_name])
    run.print(
        f"{config.method} on {train_source.name} ({train_source.num_examples} images, "
        f"{train_source.num_classes or 'no'} classes) | {backbone} "
        f"({backbone_params / 1e6:.2f}M parameters) | {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s), {jax.process_count()} host(s) | global batch "
        f"{config.batch_size} = {devices} x {per_device} per device | lr {training.peak_lr:.4g} = "
        f"base_lr {config.base_lr} scaled {config.lr_scaling} | {num_steps} steps = "
        f"{num_steps / steps_per_epoch:.1f} epochs of {steps_per_epoch}"
        + (f" | resuming at step {int(state.step)}" if resumed else "")
    )
    return run, state


# ==================================================================== 2. the loop


def run_loop(run: Run, state: TrainState, writer: MetricsWriter) -> tuple[TrainState, float]:
    """Steps from the state's step to the end; returns the final state and the training time."""
    config, start_step = run.config, int(state.step)
    num_classes = run.train_source.num_classes
    batches = data.train_batches(
        run.train_source,
        recipes=run.training.recipes,
        global_batch=config.batch_size,
        seed=config.seed,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    collapse = CollapseMonitor(run.training.embedding_dim)
    last_saved = start_step if run.resumed else None
    pending = None  # (step, metrics) of the previous step, checked one step late
    loop_start = time.time()
    window_start, window_steps = None, 0  # the speed window starts after the first (compiling) step

    def check_finite(step, metrics):
        loss = float(metrics["loss"])
        warning = collapse.update(step, float(metrics["embedding_std"]))
        if warning:
            logging.warning(warning)
            run.print(f"WARNING: {warning}")
        if not np.isfinite(loss):
            kept = f"the last good checkpoint is step {last_saved}" if last_saved else (
                "no checkpoint was saved")  # fmt: skip
            raise NonFiniteLossError(
                f"loss became {loss} at step {step}; stopping ({kept}). Lower base_lr, "
                "raise warmup_epochs or use dtype=float32."
            )

    watch = preemption.Watch()  # from now on SIGTERM means: save at the next step, stop
    try:
        for step in range(start_step, run.num_steps):
            batch = _global_batch(next(batches), run.mesh, num_classes)
            state, metrics = run.training.step_fn(state, batch)
            if window_start is None:  # the first step compiles: keep it out of images/s and ETA
                jax.block_until_ready(metrics["loss"])
                window_start = time.time()
            else:
                window_steps += 1
            if pending is not None:
                check_finite(*pending)
            done = step + 1  # steps completed; the numbering of the logs and checkpoints
            pending = (done, metrics)
            eval_due = config.eval_every_steps and done % config.eval_every_steps == 0
            eval_due = eval_due and done < run.num_steps  # the final evaluation follows the loop
            if done % config.log_every_steps == 0 or done == run.num_steps or eval_due:
                check_finite(*pending)
                now = time.time()
                rate = window_steps / (now - window_start) if window_steps else None  # steps/s
                record = {
                    "step": done,
                    "epoch": round(done / run.steps_per_epoch, 3),
                    **{k: float(v) for k, v in jax.device_get(metrics).items()},
                    # None while only the compiling step has run
                    "images_per_sec": round(rate * config.batch_size, 1) if rate else None,
                }
                if eval_due:
                    record.update(run.evaluate(state))
                writer.write(record)
                eta = (run.num_steps - done) / rate if rate else None
                run.print(progress_line(record, run.num_steps, run.steps_per_epoch, eta))
                window_start, window_steps = time.time(), 0
            save_due = done % config.checkpoint_every_steps == 0 or done == run.num_steps
            preempted = watch.reached(done)  # every host asks at every step, SIGTERM or not
            if save_due or preempted:
                check_finite(*pending)
                run.lock.check()  # another run took the workdir over: write nothing more
                checkpoint.save(run.mngr, done, state)
                last_saved = done
            if preempted:
                checkpoint.wait(run.mngr)
                raise Preempted(
                    f"SIGTERM received; saved checkpoint {done} in {run.mngr.directory}. Rerun "
                    "the same command to resume from it"
                )
    finally:
        # Close the input pipeline now: left to the garbage collector, tearing down the tf.data
        # iterator stalled the end of a run by 10-18 s on 2 cores (measured: 0.01 s when closed).
        batches.close()
        watch.close()
        _finish_saving(run.mngr)
    if pending is not None:
        check_finite(*pending)
    return state, time.time() - loop_start


# ==================================================================== 3. the end


def finish(run: Run, state: TrainState, writer: MetricsWriter, train_seconds: float) -> dict:
    """Final evaluation beside a random encoder, the encoder export, and results.json."""
    config, encoder, method = run.config, run.encoder, run.training.method
    results = {"step": int(state.step), "train_seconds": round(train_seconds, 1)}
    if method.has_classifier:  # what the report needs to put the row beside the others
        results.update(protocol=method.result_name, label_fraction=config.label_fraction,
                       pretrained=config.pretrained or None)  # fmt: skip
    results.update(method.extra_results())
    results.update(run.evaluate(state))
    if config.eval_random_init:
        random_state = run.training.initial_state(run.rng)
        baseline = run.evaluate(random_state)
        results.update({f"random_init_{k}": v for k, v in baseline.items()})
    spec = {
        "architecture": models.architecture_spec(encoder),
        "image_size": config.image_size,
        "feature_dim": encoder.feature_dim,
        "method": config.method,
        "dataset": config.dataset,
        "step": int(state.step),
        "epochs": round(int(state.step) / run.steps_per_epoch, 3),
    }
    # The first layer of the MLP projector, if the network has one (SimCLR v2 fine-tunes from it).
    projector = checkpoint.projector_layer_1(
        run.training.net, {"params": state.params, "batch_stats": state.batch_stats}
    )
    head = None
    if method.has_classifier:  # exported too, so the classifier can teach (distillation)
        head = {"params": jax.device_get(state.params["head"])}
        spec["classifier"] = {"num_classes": run.train_source.num_classes,
                              "top1": results.get(f"{method.result_name}_top1"),
                              "label_fraction": results.get("label_fraction")}  # fmt: skip
        if projector is not None:  # the linear layer reads that layer (finetune_from)
            spec["classifier"]["finetune_from"] = checkpoint.PROJECTOR_LAYER
    variables = jax.device_get(run.encoder_variables(state))
    checkpoint.export_encoder(
        fileio.join(run.workdir, "export"),
        spec=spec,
        variables=variables,
        head=head,
        projector=projector,
    )
    if run.is_lead:
        if isinstance(encoder, models.ResNet):  # for PyTorch users: torchvision's names, layouts
            torch_export.export_torchvision(
                variables,
                fileio.join(run.workdir, "export", torch_export.TORCHVISION_FILE),
                spec=spec,
            )
        fileio.write_text(fileio.join(run.workdir, "results.json"), json.dumps(results, indent=2))
        writer.write({"step": int(state.step), **{k: v for k, v in results.items() if k != "step"}})
    run.print(results_summary(results, run.workdir))
    if config.get("save_pictures", False) and not method.has_classifier:
        save_pictures(run)
    return results


def save_pictures(run: Run) -> None:
    """augmentations.png and embedding.png (ssl_jax/visualize.py) in the workdir. The run is
    complete by now: a picture that cannot be drawn is a warning, never a failed run."""
    if jax.process_count() > 1:  # the t-SNE is one host's job: draw it afterwards on one host
        run.print(f"Pictures: run `python -m ssl_jax.visualize {run.workdir}` on one host")
        return
    from ssl_jax import visualize  # scikit-learn and PIL drawing: only when pictures are drawn

    try:
        visualize.visualize_workdir(run.workdir)
    except Exception as e:  # noqa: BLE001  (any failure here must leave the finished run alone)
        logging.warning("Pictures not drawn: %s", e)
        run.print(f"WARNING: pictures not drawn ({e}); try python -m ssl_jax.visualize "
                  f"{run.workdir}")  # fmt: skip


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Pretrain `config.method` on `config.dataset`; resume from workdir when it has checkpoints."""
    with contextlib.ExitStack() as cleanup:
        workdir = fileio.absolute(workdir)
        run, state = set_up(config, workdir, cleanup)
        writer = MetricsWriter(workdir, enabled=run.is_lead)
        cleanup.callback(writer.close)
        if run.resumed:
            writer.write_event({"event": "resume", "step": int(state.step)})
        state, train_seconds = run_loop(run, state, writer)
        return finish(run, state, writer, train_seconds)


# ==================================================================== helpers


def total_steps(config, steps_per_epoch: int) -> int:
    return config.total_steps if config.total_steps > 0 else config.num_epochs * steps_per_epoch


def results_summary(results: dict, workdir: str) -> str:
    """The closing lines: what the encoder reached, beside a random encoder when measured."""
    if "protocol" in results and f"{results['protocol']}_top1" in results:
        name = results["protocol"]
        return (f"Results after {results['step']} steps (test split): {name} top-1 "
                f"{results[f'{name}_top1']:.4f}, top-5 {results[f'{name}_top5']:.4f}\n"
                f"Saved {workdir}/results.json; encoder and classifier exported to "
                f"{workdir}/export")  # fmt: skip
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


def _finish_saving(mngr) -> None:
    """Waits for the checkpoint in flight; when the loop is already failing (a NaN loss), a
    failed write is logged rather than raised, so the first error is the one reported."""
    failing = sys.exc_info()[0] is not None
    try:
        checkpoint.wait(mngr)
    except CheckpointWriteError as e:
        if not failing:
            raise
        logging.error("%s", e)


def _global_batch(host_batch, mesh, num_classes):
    batch = {"views": host_batch["views"]}
    if num_classes:
        batch["label"] = host_batch["label"]
    return parallel.to_global(batch, mesh)
