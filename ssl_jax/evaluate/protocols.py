"""The evaluation task of the command line: frozen-encoder protocols on an exported encoder.

    python -m ssl_jax.main --config=configs/linear_eval.py:demo --config.pretrained=PATH \
        --workdir=DIR

PATH is a pretraining workdir or its export/ folder. The encoder is frozen: its features of the
un-augmented train and test splits are computed once (sharded over every device, as during
pretraining) and cached in DIR/features/, then each protocol in `config.protocols` runs on them:

    knn              weighted kNN (Wu et al. 2018), top-1 and top-5
    frozen_features  logistic regression to convergence, L2 chosen on held-out train examples
    fewshot          n labels per class, mean and std over seeded draws
    augmented        a linear layer trained on the frozen encoder through random crops and
                     flips (the papers' protocol): a run of the generic trainer with the
                     `augmented` block of the config, in DIR/augmented/ (resumable like any run)

The workdir follows the pretraining contract: config.json, metrics.jsonl and TensorBoard (one
record per protocol), results.json. A killed run, rerun with the same command, reuses the cached
features (the part that costs device time) and recomputes the protocols, which are deterministic,
so it ends with the same numbers.
"""

import copy
import io
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ssl_jax import checkpoint, data, fileio, models, parallel, run_lock
from ssl_jax import workdir as workdir_lib
from ssl_jax.config_check import PROTOCOLS
from ssl_jax.errors import UserError
from ssl_jax.evaluate import features as features_lib
from ssl_jax.evaluate.fewshot import fewshot_linear
from ssl_jax.evaluate.knn import knn_accuracy
from ssl_jax.evaluate.logistic import frozen_features_linear
from ssl_jax.metrics_writer import MetricsWriter


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs config.protocols on the frozen encoder at config.pretrained; returns results.json."""
    workdir = fileio.absolute(workdir)
    workdir_lib.prepare(workdir)
    stale_after_s = config.get(run_lock.CONFIG_KEY, run_lock.DEFAULT_STALE_AFTER_S)
    with run_lock.acquire_on_all_hosts(workdir, stale_after_s=stale_after_s):  # one run per workdir
        return _run(config, workdir)


def _run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    protocols = tuple(config.protocols)  # checked by config_check.validate_evaluation
    spec, apply_fn, variables = _encoder(config)
    train_source = data.get_run_source(config, "train", workdir)
    test_source = data.get_run_source(config, "test", workdir)
    if train_source.num_classes == 0:
        raise UserError(f"{train_source.name} has no labels; evaluation needs a labelled dataset")
    if test_source is None:
        raise UserError(f"{config.dataset} has no test split (add PATH/test/<class>/ folders)")
    is_lead = jax.process_index() == 0
    if is_lead:
        workdir_lib.write_config(config, workdir)
    writer = MetricsWriter(workdir, enabled=is_lead)
    start = time.time()
    image_size = config.image_size or spec["image_size"]
    backbone = models.describe(spec["architecture"])
    encoder_kind = "random init" if config.random_init else "trained"
    print(
        f"{' + '.join(protocols)} on {train_source.name} ({train_source.num_examples} images) / "
        f"{test_source.name} ({test_source.num_examples}) | {spec.get('method', '?')} {backbone} "
        f"({encoder_kind}) from {config.pretrained} | {image_size} px | "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)",
        flush=True,
    )

    mesh = parallel.make_mesh()
    batch = max(mesh.devices.size, config.eval_batch_size // mesh.devices.size * mesh.devices.size)
    fingerprint = {"pretrained": fileio.absolute(config.pretrained), "step": spec.get("step"),
                   "random_init": bool(config.random_init), "seed": config.seed,
                   "image_size": image_size}  # fmt: skip
    feats = {}
    need_features = any(p in _PROTOCOLS for p in protocols)
    for split, source in (("train", train_source), ("test", test_source))[: 2 * need_features]:
        feats[split] = _cached_features(
            fileio.join(workdir, "features", f"{split}.npz"),
            {**fingerprint, "source": source.name, "examples": source.num_examples},
            lambda s=source: features_lib.extract_features(
                apply_fn, variables, s, image_size=image_size, batch_size=batch, mesh=mesh
            ),
            is_lead,
        )
    num_classes = train_source.num_classes

    results = {
        "task": "evaluate",
        "protocols": list(protocols),
        "pretrained": fileio.absolute(config.pretrained),
        "encoder": encoder_kind,
        "method": spec.get("method"),
        "backbone": backbone,
        "pretrain_step": spec.get("step"),
        "pretrain_epochs": spec.get("epochs"),
        "dataset": config.dataset,
        "image_size": image_size,
        "label_fraction": 1.0,
    }
    for step, protocol in enumerate(protocols, start=1):
        t = time.time()
        if protocol == "augmented":
            record, line = _augmented(config, spec, image_size, workdir)
        else:
            record, line = _PROTOCOLS[protocol](config, feats, num_classes)
        ids = record.pop("fewshot_train_ids", None)
        if ids is not None and is_lead:  # the examples each draw used, to inspect or reuse
            fileio.write_text(fileio.join(workdir, "fewshot_train_ids.json"), json.dumps(ids))
        results.update(record)
        writer.write({"step": step, "protocol": protocol, "seconds": round(time.time() - t, 1),
                      **record})  # fmt: skip
        print(line, flush=True)
    results["eval_seconds"] = round(time.time() - start, 1)
    if is_lead:
        fileio.write_text(fileio.join(workdir, "results.json"), json.dumps(results, indent=2))
    writer.close()
    print(f"Saved {workdir}/results.json", flush=True)
    return results


def _knn(config, feats, num_classes) -> tuple[dict, str]:
    (train_x, train_y), (test_x, test_y) = feats["train"], feats["test"]
    knn = knn_accuracy(train_x, train_y, test_x, test_y, k=config.knn.k,
                       temperature=config.knn.temperature, num_classes=num_classes)  # fmt: skip
    line = f"kNN (k={config.knn.k}, T={config.knn.temperature:g}): top-1 {knn['top1']:.4f}"
    return {"knn_top1": knn["top1"], "knn_top5": knn["top5"]}, line


def _frozen_features(config, feats, num_classes) -> tuple[dict, str]:
    (train_x, train_y), (test_x, test_y) = feats["train"], feats["test"]
    ff = config.frozen_features
    out = frozen_features_linear(train_x, train_y, test_x, test_y, num_classes,
                                 l2_grid=tuple(ff.l2_grid), holdout_fraction=ff.holdout_fraction,
                                 seed=config.seed, max_iterations=ff.max_iterations)  # fmt: skip
    record = {
        "frozen_features_top1": out["top1"],
        "frozen_features_top5": out["top5"],
        "frozen_features_l2": out["l2"],
        "frozen_features_holdout_top1_by_l2": {
            f"{k:g}": v for k, v in out["validation_top1"].items()
        },
    }
    line = (f"linear (frozen features; l2 {out['l2']:g} chosen on {ff.holdout_fraction:g} of "
            f"train): top-1 {out['top1']:.4f}, top-5 {out['top5']:.4f}")  # fmt: skip
    return record, line


def _fewshot(config, feats, num_classes) -> tuple[dict, str]:
    (train_x, train_y), (test_x, test_y) = feats["train"], feats["test"]
    fs = config.fewshot
    out = fewshot_linear(train_x, train_y, test_x, test_y, num_classes, shots=tuple(fs.shots),
                         draws=fs.draws, l2=fs.l2, seed=config.seed)  # fmt: skip
    record = {"fewshot_train_ids": {str(n): r["train_ids"] for n, r in out.items()}}
    for n, r in out.items():
        record[f"fewshot_{n}shot_top1"] = r["top1_mean"]
        record[f"fewshot_{n}shot_top1_std"] = r["top1_std"]
        record[f"fewshot_{n}shot_labels"] = f"{n}/class"
    line = f"few-shot linear ({fs.draws} draws, top-1 mean +- std): " + ", ".join(
        f"{n}/class {r['top1_mean']:.4f} +- {r['top1_std']:.4f}" for n, r in out.items()
    )
    return record, line


def augmented_config(config, spec: dict, image_size: int) -> ml_collections.ConfigDict:
    """The training config of the augmented protocol: config.augmented, with the encoder, data
    and seed of the evaluation (its own copies of those keys are ignored)."""
    sub = copy.deepcopy(config.augmented)
    sub.pretrained = "" if config.random_init else config.pretrained
    sub.from_scratch = bool(config.random_init)  # the random-init baseline: a frozen random net
    sub.frozen_encoder = True
    sub.dataset, sub.data_dir, sub.seed = config.dataset, config.data_dir, config.seed
    if "data_ram_limit_gb" in config:
        sub.data_ram_limit_gb = config.data_ram_limit_gb
    sub.image_size = image_size
    for key, value in models.model_config(spec["architecture"]).items():
        sub.model[key] = value
    return sub


def _augmented(config, spec, image_size, workdir) -> tuple[dict, str]:
    from ssl_jax import train  # the generic loop, as for pretraining; imported only when needed

    sub = augmented_config(config, spec, image_size)
    out = train.train_and_evaluate(sub, fileio.join(workdir, "augmented"))
    record = {
        "augmented_top1": out["augmented_top1"],
        "augmented_top5": out["augmented_top5"],
        "augmented_steps": out["step"],
        "augmented_epochs": sub.num_epochs if not sub.total_steps else None,
    }
    line = (f"linear (augmented: {out['step']} steps of crop + flip, {sub.optimizer}): top-1 "
            f"{out['augmented_top1']:.4f}, top-5 {out['augmented_top5']:.4f}")  # fmt: skip
    return record, line


_PROTOCOLS = {"knn": _knn, "frozen_features": _frozen_features, "fewshot": _fewshot}
assert (*_PROTOCOLS, "augmented") == PROTOCOLS


def _encoder(config):
    """(spec, apply_fn, variables) of the export at config.pretrained (re-initialised if asked)."""
    path = config.pretrained
    if not fileio.is_dir(path):
        raise UserError(f"pretrained={path!r} is not a directory; pass a pretraining workdir or "
                        "its export/ folder")  # fmt: skip
    try:
        path, spec = checkpoint.find_export(path)
    except FileNotFoundError:
        raise UserError(f"{config.pretrained} holds no exported encoder ({checkpoint.ENCODER_SPEC} "
                        "not found): finish the pretraining run first (rerun its command to "
                        "resume it)") from None  # fmt: skip
    apply_fn, variables = checkpoint.load_encoder(path)
    if config.random_init:
        module = models.backbone_from_spec(spec["architecture"])
        dummy = jnp.zeros((1, spec["image_size"], spec["image_size"], 3), jnp.float32)
        variables = module.init(jax.random.key(config.seed), dummy, train=False)
    return spec, apply_fn, variables


def _cached_features(path: str, fingerprint: dict, compute, is_lead: bool):
    """Features and labels from `path` when it was written for the same fingerprint, else
    computed and saved (written whole by fileio, so a kill never leaves half of one)."""
    if fileio.exists(path):
        try:
            with np.load(io.BytesIO(fileio.read_bytes(path))) as f:
                if json.loads(str(f["fingerprint"])) == fingerprint:
                    print(f"reusing the features in {path}", flush=True)
                    return f["features"], f["labels"]
        except (OSError, ValueError, KeyError) as e:
            logging.warning("Ignoring unreadable feature cache %s (%s)", path, e)
    feats, labels = compute()
    if is_lead:
        fileio.makedirs(fileio.parent(path))
        buffer = io.BytesIO()
        np.savez(buffer, features=feats, labels=labels, fingerprint=json.dumps(fingerprint))
        fileio.write_bytes(path, buffer.getvalue())
    return feats, labels
