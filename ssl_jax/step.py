"""The train step and how it is built: state, loss and gradients, optimiser and EMA updates.

`build_training(config, mesh, ...)` is the one place a config becomes a network, an optimiser, a
state initialiser and the sharded, jitted, donated `step(state, global_batch) -> (state, metrics)`;
the trainer (ssl_jax.train), the tests and the benchmarks all call it.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from ssl_jax import methods, optim, parallel
from ssl_jax.data.augment import parse_recipe
from ssl_jax.errors import UserError
from ssl_jax.evaluate.health import effective_rank, embedding_std
from ssl_jax.evaluate.online_probe import ProbeHead, probe_step

DROPOUT_STREAM = 1  # folded into the step's key for the online network's "dropout" rng


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


def create_state(config, net, method, tx, probe_tx, num_classes, rng, sample_views):
    """Initial TrainState; run under jax.eval_shape for shapes, under jit for values."""
    init_rng, probe_rng, extra_rng, state_rng = jax.random.split(rng, 4)
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
        extra=method.init_extra(variables, extra_rng, sample_views),
        rng=state_rng,
    )


def loss_and_grads(state: TrainState, batch, *, net, method, mesh=None):
    """The method's loss on a GLOBAL batch and its gradient w.r.t. the network's parameters.

    `mesh` is handed to the method for per-device computations (jax.shard_map); None when the
    caller has none (then such options are unavailable).

    Returns ((loss, (metrics, network outputs, new batch_stats, aux)), grads).
    """
    views = batch["views"]

    def apply_target(variables, target_views):
        outputs, mutated = net.apply(
            variables, target_views, train=True, method="target", mutable=["batch_stats"]
        )
        # The target branch is a constant of the loss: no gradient reaches the target.
        return jax.lax.stop_gradient(outputs), mutated["batch_stats"]

    inputs = methods.StepInputs(
        views=views,
        extra=state.extra,
        rng=jax.random.fold_in(state.rng, state.step),
        step=state.step,
        apply_target=apply_target,
        net=net,
        mesh=mesh,
        labels=batch.get("label"),
    )

    # Drop-path (a ViT's model.drop_path_rate) draws from "dropout": the online (student)
    # network gets a key, `apply_target` none, so an EMA target or teacher runs whole, as DINO's
    # teacher (built without drop-path). A key of its own, apart from the method's inputs.rng.
    dropout_rng = jax.random.fold_in(inputs.rng, DROPOUT_STREAM)

    def loss_fn(params):
        outputs, mutated = net.apply(
            {"params": params, "batch_stats": state.batch_stats},
            views,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": dropout_rng},
        )
        loss, metrics, aux = method.loss(outputs, inputs)
        return loss, (metrics, outputs, mutated["batch_stats"], aux)

    return jax.value_and_grad(loss_fn, has_aux=True)(state.params)


def train_step(
    state: TrainState, batch, *, net, method, tx, probe_tx, num_classes, schedule, mesh=None
):
    """One optimiser step on a GLOBAL batch: (state, batch) -> (state, metrics)."""
    (loss, (metrics, outputs, batch_stats, aux)), grads = loss_and_grads(
        state, batch, net=net, method=method, mesh=mesh
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = method.post_update(optax.apply_updates(state.params, updates))
    extra = method.update_extra(state.extra, aux, params=params, step=state.step)

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
    recipes: list  # the view recipes, one per view
    embedding_dim: int  # width of outputs["embedding"], for the collapse monitor

    def initial_state(self, rng: jax.Array) -> TrainState:
        """The initial state, sharded as `state_sharding` (the trained run's and the random
        baseline's share one compiled initialiser)."""
        return self._compiled_init(rng)

    @functools.cached_property
    def _compiled_init(self):
        """On CPU the initialiser is compiled without LLVM's optimisations: it runs once or
        twice, but its threefry draws (one per parameter) take XLA 15-20 s to compile at full
        optimisation on 2 cores. Measured: ResNet-18 x0.125 20.0 s -> 3.7 s; ResNet-50 compile
        + run 18.0 s -> 10.6 s. The values agree to float32 rounding (at most an ulp; tested)."""
        lowered = jax.jit(self.init, out_shardings=self.state_sharding).lower(
            jax.random.PRNGKey(0)  # only its shape and dtype matter here
        )
        on_cpu = jax.devices()[0].platform == "cpu"
        options = {"xla_backend_optimization_level": 0} if on_cpu else None
        return lowered.compile(compiler_options=options)


def build_training(config, mesh, *, num_classes: int, steps_per_epoch: int, num_steps: int):
    """The method's network, optimiser, state initialiser and the sharded, jitted train step."""
    method = methods.get_method(
        config, total_steps=num_steps, num_classes=num_classes, steps_per_epoch=steps_per_epoch
    )
    net = method.network()
    if method.has_classifier:  # it is its own classifier: an online probe would add nothing
        num_classes = 0
    recipes = [config.augment[name] for name in check_recipes(method, config)]
    sample_views = [jnp.zeros((2, r.size, r.size, 3), jnp.uint8) for r in recipes]
    abstract_params = jax.eval_shape(
        lambda: net.init(jax.random.PRNGKey(0), sample_views, train=False)["params"]
    )
    tx, schedule, peak_lr = optim.from_config(
        config, params=abstract_params, total_steps=num_steps, steps_per_epoch=steps_per_epoch
    )
    tx = optim.freeze(tx, method.frozen_parts())
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
        mesh=mesh,
    )
    step_fn = jax.jit(
        step,
        in_shardings=(state_sharding, parallel.batch_sharded(mesh)),
        out_shardings=(state_sharding, parallel.replicated(mesh)),
        donate_argnums=0,
    )
    outputs = jax.eval_shape(
        lambda: net.apply(
            net.init(jax.random.PRNGKey(0), sample_views, train=False), sample_views, train=False
        )
    )
    embedding_dim = outputs["embedding"].shape[-1]
    return Training(net, method, init, state_sharding, step_fn, peak_lr, recipes, embedding_dim)


def check_recipes(method, config) -> list[str]:
    """The method's view recipe names, each present in config.augment and valid (UserError)."""
    names = method.view_recipes()
    missing = [n for n in names if n not in config.augment]
    if missing:
        raise UserError(
            f"view recipe(s) {missing} not in config.augment (has: {', '.join(config.augment)})"
        )
    for name in names:
        try:
            parse_recipe(config.augment[name])
        except UserError as e:
            raise UserError(f"config.augment.{name}: {e}") from None
    return names
