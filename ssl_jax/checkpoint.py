"""Checkpoints: save, auto-resume past damaged checkpoints, encoder export and load.

Train state goes to workdir/checkpoints through orbax's CheckpointManager. Saves are
asynchronous: `save` returns once the arrays are copied off the devices and the files are written
by a background thread while training goes on; `wait` blocks until the last one is complete.
Orbax writes each checkpoint to a temporary directory that is renamed when complete, so a kill
at any moment (during a save too) leaves either the old set or the new one, never a half-listed
step. A save that fails (disk full) is a CheckpointWriteError naming the step, the path and the
cause; the checkpoints before it are untouched.

The export (workdir/export) is the encoder alone: `encoder.json` (architecture and input size)
beside an orbax checkpoint of its variables, loadable with `load_encoder(path)` without the
training config or any of ssl_jax's training code. Beside it, when the run had them:
  head/               a classifier's linear layer (fine-tuning, distillation): load_classifier;
  projector_layer_1/  the first layer (Linear -> BN -> ReLU) of the method's MLP projector, the
                      layer SimCLR v2 fine-tunes from (configs/finetune.py
                      finetune_from=projector_layer_1), with an encoder.json entry
                      `projector_layer_1: {in_dim, width, batch_norm}`: load_projector_layer.
Exports made before projector layers were exported have no such entry and load as before.
"""

import errno
import json
import logging as std_logging
import os
import re
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from ssl_jax import fileio
from ssl_jax.errors import CheckpointWriteError

ENCODER_SPEC = "encoder.json"
ENCODER_VARIABLES = "variables"
HEAD_VARIABLES = "head"  # a classifier's linear layer on the encoder, when the run trained one
# The projector's first layer: the export's folder, its encoder.json entry, and the value of
# config.finetune_from that fine-tunes from it.
PROJECTOR_LAYER = "projector_layer_1"


def _pytree_handler() -> ocp.PyTreeCheckpointHandler:
    """Orbax's standard handler, except that a replicated jax.Array is written whole.

    Orbax's default ("replica-parallel") splits each replicated array into one slice per replica,
    and every slice of a new shape compiles a small XLA program: the first save of a run cost
    12 s of compiling for a 0.2M-parameter ResNet on 8 CPU devices (1 s without it). The train
    state is replicated over the data-parallel devices and small next to the step's data, so one
    writer per array loses nothing.
    """
    registry = ocp.type_handlers.create_type_handler_registry(
        (int, ocp.type_handlers.ScalarHandler()),
        (float, ocp.type_handlers.ScalarHandler()),
        (bytes, ocp.type_handlers.ScalarHandler()),
        (np.number, ocp.type_handlers.ScalarHandler()),
        (np.ndarray, ocp.type_handlers.NumpyHandler()),
        (jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False)),
        (str, ocp.type_handlers.StringHandler()),
    )
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


class _OrbaxErrors(std_logging.Filter):
    """Drops ERROR records about orbax's checkpoint writes, which `save`/`wait` report once, as a
    CheckpointWriteError with its cause: a failed background save is logged with a traceback by
    each of orbax's threads (four for one full disk), and asyncio logs "Task exception was never
    retrieved" for each of the save's other writes (their message names orbax's code)."""

    def filter(self, record) -> bool:
        about_orbax = "/orbax/checkpoint/" in record.pathname + record.getMessage()
        return not (record.levelno >= std_logging.ERROR and about_orbax)


_orbax_filter = _OrbaxErrors()


def _is_closed_loop_echo(exc_type, exc, tb) -> bool:
    """Is this the "Event loop is closed" error of a write that outlived its failed save?

    When one array's write fails (a full disk), orbax closes that save's event loop while
    tensorstore still finishes the other arrays' writes; each one's completion callback then
    finds the loop closed, and the error is reported as unraisable, dozens of tracebacks that
    say nothing the CheckpointWriteError does not.
    """
    if exc_type is not RuntimeError or str(exc) != "Event loop is closed":
        return False
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name == "_check_closed"


def _quiet_unraisablehook(previous):
    def hook(unraisable):
        echo = (unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
        if not _is_closed_loop_echo(*echo):
            previous(unraisable)

    hook.ssl_jax_quiet = True
    return hook


def manager(workdir: str, *, keep: int) -> ocp.CheckpointManager:
    logging.get_absl_logger().addFilter(_orbax_filter)  # once: a logger holds a filter once
    std_logging.getLogger("asyncio").addFilter(_orbax_filter)
    if not getattr(sys.unraisablehook, "ssl_jax_quiet", False):
        sys.unraisablehook = _quiet_unraisablehook(sys.unraisablehook)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        # The write overlaps the next steps; at ImageNet scale a synchronous save stalls every
        # device for the seconds the host needs to write the state.
        enable_async_checkpointing=True,
        # Orbax ignores its own temporary directories; a killed save leaves one behind. Cleaning
        # them on start keeps the folder tidy without touching a finished checkpoint.
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(
        fileio.join(workdir, "checkpoints"), options=options, item_handlers=_pytree_handler()
    )


# checkpoint directory -> the step its manager is writing in the background
_in_flight: dict[str, int] = {}


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
    """Starts saving `state` as checkpoint `step`; returns once the arrays are on the host.

    The previous save is finished first, so at most one is in flight and its failure is
    reported before another starts.

    Raises:
        CheckpointWriteError: this save or the previous one could not be written.
    """
    wait(mngr)
    _in_flight[str(mngr.directory)] = step
    try:
        mngr.save(step, args=ocp.args.PyTreeSave(state), force=True)
    except Exception as e:  # orbax and tensorstore wrap OS errors in many types
        raise _write_error(e, mngr, step) from None


def wait(mngr: ocp.CheckpointManager) -> None:
    """Blocks until the save in flight, if any, is complete on disk.

    Raises:
        CheckpointWriteError: it could not be written.
    """
    step = _in_flight.pop(str(mngr.directory), None)
    try:
        mngr.wait_until_finished()
    except Exception as e:
        raise _write_error(e, mngr, step) from None


def _write_error(e: Exception, mngr: ocp.CheckpointManager, step: int | None):
    """One line for a failed save: which step, where, why, and that the older ones are kept."""
    causes, seen = [], e
    while seen is not None and len(causes) < 20:  # the chain: orbax -> tensorstore -> OSError
        causes.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(c) for c in causes)
    codes = {getattr(c, "errno", None) for c in causes}
    if errno.ENOSPC in codes or "No space left" in text or "ENOSPC" in text:
        why = "no space left on device"
    elif errno.EACCES in codes or "Permission denied" in text:
        why = "permission denied"
    else:
        # TensorStore puts the storage's answer at the end of a long first line, before the
        # spec it was opening (hundreds of characters that say nothing to a user).
        first = re.sub(r"\s*\[tensorstore_spec=.*", "", str(e).splitlines()[0] if str(e) else "")
        why = f"{type(e).__name__}: {first[:400]}"
    mngr.reload()
    done = [s for s in mngr.all_steps() if step is None or s < step]
    kept = f"checkpoint {max(done)} is intact" if done else "no earlier checkpoint exists"
    return CheckpointWriteError(
        f"cannot save checkpoint {step} in {mngr.directory}: {why}; {kept}. Free space (or fix "
        "the cause) and rerun the same command to resume"
    )


def restore_latest(mngr: ocp.CheckpointManager, abstract_state):
    """The newest checkpoint that restores, or None when there is none.

    A checkpoint that fails to restore (cut short, corrupted, written by an incompatible config)
    is moved aside to workdir/checkpoints_unreadable/ with a warning naming it, and the one
    before is tried. It is moved rather than deleted so nothing is lost, and so that a later save
    of the same step does not collide with it.
    """
    for step in sorted(mngr.all_steps(), reverse=True):
        path = fileio.join(mngr.directory, str(step))
        try:
            restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
            return mngr.restore(
                step, args=ocp.args.PyTreeRestore(abstract_state, restore_args=restore_args)
            )
        except Exception as e:  # orbax raises many types for damaged files; all mean "unusable"
            aside = fileio.join(
                mngr.directory.parent,
                "checkpoints_unreadable",
                f"{step}-{time.strftime('%Y%m%d-%H%M%S')}",
            )
            logging.warning(
                "Checkpoint %s cannot be restored (%s: %s); moved it to %s and trying the one "
                "before.",
                path,
                type(e).__name__,
                str(e).splitlines()[0][:200] if str(e) else "",
                aside,
            )
            print(f"WARNING: checkpoint {path} cannot be restored; moved to {aside}", flush=True)
            fileio.move_tree(path, aside)
            mngr.reload()
    return None


def export_encoder(
    directory: str,
    *,
    spec: dict,
    variables: dict,
    head: dict | None = None,
    projector: dict | None = None,
):
    """Write the encoder: spec (architecture) as JSON and its variables with orbax; `head`, the
    {"params"} of a classifier's linear layer on it (fine-tuning), and `projector`, the
    {"params", "batch_stats"} of the projector's first layer (`projector_layer_1`), beside them
    when given (the spec then gets the layer's `projector_layer_1` entry)."""
    # Locally the new export is written beside the old one and renamed over it once complete.
    # An object store cannot rename a folder (it copies every object), so there the old export
    # is removed first and encoder.json, which `find_export` looks for, is written last: a kill
    # in between leaves no export, which the rerun writes again from the final checkpoint.
    local = fileio.is_local(directory)
    target = directory + ".tmp" if local else directory
    if projector is not None:
        spec = {**spec, PROJECTOR_LAYER: projector_layer_spec(projector)}
    if jax.process_index() == 0:
        fileio.remove_tree(target)
        fileio.makedirs(target)
    variables = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), variables)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(fileio.join(target, ENCODER_VARIABLES), variables)
        if head is not None:
            head = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), head)
            ckptr.save(fileio.join(target, HEAD_VARIABLES), head)
        if projector is not None:
            projector = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), projector)
            ckptr.save(fileio.join(target, PROJECTOR_LAYER), projector)
    if jax.process_index() == 0:
        fileio.write_text(fileio.join(target, ENCODER_SPEC), json.dumps(spec, indent=2))
        if local:
            fileio.remove_tree(directory)
            os.replace(target, directory)


def projector_layer_1(net, variables: dict) -> dict | None:
    """{"params", "batch_stats"} of the first layer of `net`'s MLP projector (Linear -> BN ->
    ReLU, or Linear -> ReLU), or None when it has none.

    A method network's `projector` (methods/network.py: SimCLR, MoCo, BYOL, SwAV...) has one
    when it is a models.MLPHead of two layers or more (a one-layer head is the output layer, not
    a hidden one); a classifier fine-tuned from that layer (models.classifier.ProjectorLayer)
    has it too, fine-tuned. DINO's head is not an MLPHead: none.

    Args:
      net: the run's network module (unbound).
      variables: its {"params", "batch_stats"} (the online ones: the exported encoder's).
    """
    from ssl_jax.models.classifier import ProjectorLayer
    from ssl_jax.models.heads import MLPHead

    head = getattr(net, "projector", None)
    has_layer = isinstance(head, ProjectorLayer) or (
        isinstance(head, MLPHead) and head.num_layers >= 2
    )
    if not has_layer or "projector" not in variables["params"]:
        return None
    params = variables["params"]["projector"]
    stats = variables.get("batch_stats", {}).get("projector", {})
    return {
        "params": {k: params[k] for k in ("dense1", "bn1") if k in params},
        "batch_stats": {k: stats[k] for k in ("bn1",) if k in stats},
    }


def projector_layer_spec(projector: dict) -> dict:
    """The encoder.json entry of a projector layer's variables: {in_dim, width, batch_norm}."""
    in_dim, width = np.shape(projector["params"]["dense1"]["kernel"])
    return {"in_dim": int(in_dim), "width": int(width), "batch_norm": "bn1" in projector["params"]}


def load_projector_layer(path: str) -> tuple[dict, dict]:
    """(its encoder.json entry {in_dim, width, batch_norm}, its {"params", "batch_stats"}) of the
    projector layer exported beside an encoder (a run's workdir or its export/ folder).

    Raises:
      FileNotFoundError: the export has no projector layer (a method without an MLP projector,
        or an export made before projector layers were exported).
    """
    path, spec = find_export(path)
    if PROJECTOR_LAYER not in spec or not fileio.is_dir(fileio.join(path, PROJECTOR_LAYER)):
        raise FileNotFoundError(f"{path} holds no {PROJECTOR_LAYER} (the projector's first "
                                "layer)")  # fmt: skip
    with ocp.StandardCheckpointer() as ckptr:
        variables = ckptr.restore(fileio.join(path, PROJECTOR_LAYER))
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    return spec[PROJECTOR_LAYER], variables


def find_export(path: str) -> tuple[str, dict]:
    """(the export folder, its encoder.json) for a run's export/ folder or the run's workdir.

    Raises:
      FileNotFoundError: neither `path` nor `path`/export holds an encoder.json.
    """
    path = fileio.absolute(path)  # orbax restores from absolute paths only
    for folder in (path, fileio.join(path, "export")):
        spec_file = fileio.join(folder, ENCODER_SPEC)
        if fileio.exists(spec_file):
            return folder, json.loads(fileio.read_text(spec_file))
    raise FileNotFoundError(
        f"{fileio.join(path, ENCODER_SPEC)} not found: pass a run's workdir/export folder"
    )


def load_encoder(path: str) -> tuple[Callable, dict]:
    """Load an exported encoder.

    Args:
      path: a run's workdir/export folder (or the workdir itself).

    Returns:
      (apply_fn, variables) with `apply_fn(variables, images) -> [N, D] float32 features`, where
      images are NHWC uint8 (or float in 0..255) at the training resolution. Normalisation is
      inside the model, so raw pixels go in.
    """
    from ssl_jax.models import backbone_from_spec  # the architecture is all we need here

    path, spec = find_export(path)
    with ocp.StandardCheckpointer() as ckptr:
        variables = ckptr.restore(fileio.join(path, ENCODER_VARIABLES))
    module = backbone_from_spec(spec["architecture"])

    @jax.jit
    def apply_fn(variables, images):
        return module.apply(variables, images, train=False)

    return apply_fn, variables


def classifier_from_spec(spec: dict):
    """The models.Classifier an export's encoder.json describes: the backbone and its linear
    layer, on the projector's first layer when spec["classifier"]["finetune_from"] says so
    (absent: on the encoder, as every export before that key)."""
    from ssl_jax.models import Classifier, backbone_from_spec
    from ssl_jax.models.classifier import ProjectorLayer

    backbone = backbone_from_spec(spec["architecture"])
    projector = None
    if spec["classifier"].get("finetune_from", "encoder") == PROJECTOR_LAYER:
        layer = spec[PROJECTOR_LAYER]
        projector = ProjectorLayer(layer["width"], layer["batch_norm"], dtype=backbone.dtype)
    return Classifier(backbone, spec["classifier"]["num_classes"], projector=projector)


def load_classifier(path: str) -> tuple[Callable, dict, dict]:
    """Load an exported classifier (a fine-tuning run's encoder and its linear layer, and the
    projector's first layer between them when it was fine-tuned from it).

    Returns:
      (apply_fn, variables, spec) with `apply_fn(variables, images) -> [N, C] float32 logits`
      for NHWC uint8 images at the training resolution, and the export's encoder.json.
    """
    path, spec = find_export(path)
    if "classifier" not in spec or not fileio.is_dir(fileio.join(path, HEAD_VARIABLES)):
        raise FileNotFoundError(f"{path} holds an encoder without a classifier: export one "
                                "from a fine-tuning run (configs/finetune.py)")  # fmt: skip
    module = classifier_from_spec(spec)
    with ocp.StandardCheckpointer() as ckptr:
        encoder = ckptr.restore(fileio.join(path, ENCODER_VARIABLES))
        head = ckptr.restore(fileio.join(path, HEAD_VARIABLES))
    variables = {
        "params": {"backbone": encoder["params"], "head": head["params"]},
        "batch_stats": {"backbone": encoder.get("batch_stats", {})},  # {}: a ViT
    }
    if module.projector is not None:
        _, layer = load_projector_layer(path)
        variables["params"]["projector"] = layer["params"]
        if layer["batch_stats"]:
            variables["batch_stats"]["projector"] = layer["batch_stats"]

    @jax.jit
    def apply_fn(variables, images):
        return module.apply(variables, [images], train=False)["logits"]

    return apply_fn, variables, spec
