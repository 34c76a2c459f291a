"""Distillation (SimCLR v2, section 2, step 3): a fine-tuned teacher labels the unlabelled data.

The teacher is an exported classifier (a configs/finetune.py run: encoder + linear layer, any
backbone), frozen and in inference mode. The student (config.model: the same or a smaller
backbone) sees the same augmented views and is trained on the teacher's soft targets at
temperature tau over the whole train split (ssl_jax.losses.distillation). The teacher's
variables are part of the extra state, so a resumed run needs only its workdir.

With `distill_label_weight` w > 0 the student also learns the true labels of the examples the
teacher was fine-tuned on (SimCLR v2, section 2: "a weighted combination" of the two losses):

    loss = (1 - w) * distillation over the batch + w * cross-entropy over its labelled examples

the labelled examples being the teacher's labelled subset (its workdir's train_subset.json; all
of the split when the teacher was fine-tuned on 100%); the rest of the split reads as
unlabelled (`train_source`). w = 0 (the default) is distillation alone, SimCLR v2's eq. 3.
Reported: the student's top-1 / top-5 (`distill_top1`) beside the teacher's (`teacher_top1`,
from its export).
"""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax import checkpoint, fileio, losses
from ssl_jax.data import subsets
from ssl_jax.errors import UserError
from ssl_jax.methods.supervised import Supervised
from ssl_jax.models import Classifier


@dataclasses.dataclass(frozen=True)
class Distill(Supervised):
    result_name = "distill"

    def validate(self) -> None:
        super().validate()
        if not self.config.distill_temperature > 0:
            raise UserError(f"distill_temperature={self.config.distill_temperature} must be > 0")
        self.teacher_spec()  # the teacher exists and is a classifier
        if not 0 <= self.label_weight <= 1:
            raise UserError(f"distill_label_weight={self.label_weight} must be in [0, 1]: the "
                            "labelled loss's share (0: distillation alone)")  # fmt: skip

    @property
    def label_weight(self) -> float:
        return self.config.get("distill_label_weight", 0.0)

    def teacher_spec(self) -> dict:
        return _teacher_spec(self.config.teacher)

    @functools.cached_property
    def teacher(self) -> Classifier:
        # Fine-tuned on the encoder or on the projector's first layer (SimCLR v2).
        return checkpoint.classifier_from_spec(self.teacher_spec())

    def network(self) -> Classifier:
        teacher_classes = self.teacher.num_classes
        if self.num_classes and self.num_classes != teacher_classes:
            raise UserError(f"the teacher predicts {teacher_classes} classes, "
                            f"{self.config.dataset} has {self.num_classes}: distil on the "
                            "data the teacher was fine-tuned for")  # fmt: skip
        return super().network()

    def init_extra(self, variables, rng, sample_views):
        # Placeholders of the teacher's shapes; load_pretrained puts its variables in.
        shapes = jax.eval_shape(lambda: self.teacher.init(rng, sample_views, train=False))
        return {"teacher": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)}

    def load_pretrained(self, state):
        state = super().load_pretrained(state)  # a pretrained student encoder, if configured
        _, variables, _ = checkpoint.load_classifier(self.config.teacher)
        return state.replace(extra={"teacher": jax.tree.map(np.asarray, variables)})

    def train_source(self, source):
        """With a labelled loss: the split labelled only on the teacher's labelled subset."""
        if not self.label_weight:
            return source
        ids = teacher_labelled_ids(self.config.teacher, source)
        if ids is None:  # the teacher was fine-tuned on every label of this split
            return source
        return source.keep_labels(ids, f"{source.name}[{len(ids)} labelled: the teacher's]")

    def loss(self, outputs, inputs):
        teacher_logits = self.teacher.apply(inputs.extra["teacher"], inputs.views)["logits"]
        student_logits = outputs["logits"]  # [VB, C]
        loss = losses.distillation(student_logits, teacher_logits, self.config.distill_temperature)
        agreement = jnp.argmax(student_logits, -1) == jnp.argmax(teacher_logits, -1)
        metrics = {"teacher_agreement": jnp.mean(agreement)}
        if self.label_weight:
            labels = jnp.tile(inputs.labels, len(inputs.views))  # [VB], views stacked view-major
            labelled = labels >= 0
            count = jnp.sum(labelled)
            cross_entropy = optax.softmax_cross_entropy_with_integer_labels(
                student_logits, jnp.where(labelled, labels, 0)
            )
            # Mean over the batch's labelled examples (none: no labelled term this step).
            labelled_loss = jnp.sum(jnp.where(labelled, cross_entropy, 0.0)) / jnp.maximum(count, 1)
            metrics.update(distill_loss=loss, labelled_loss=labelled_loss,
                           labelled_share=count / labels.size)  # fmt: skip
            loss = (1 - self.label_weight) * loss + self.label_weight * labelled_loss
        return loss, metrics, {}

    def extra_results(self) -> dict:
        classifier = self.teacher_spec()["classifier"]
        return {**super().extra_results(), "method": "distill", "encoder": "student",
                "teacher": self.config.teacher, "teacher_top1": classifier.get("top1"),
                "teacher_label_fraction": classifier.get("label_fraction"),
                "distill_label_weight": self.label_weight}  # fmt: skip


@functools.lru_cache(maxsize=8)
def _teacher_spec(path: str) -> dict:
    if not path:
        raise UserError("set --config.teacher=PATH: a fine-tuning run's workdir (configs/"
                        "finetune.py) or its export/")  # fmt: skip
    try:
        _, spec = checkpoint.find_export(path)
    except FileNotFoundError:
        raise UserError(f"teacher={path!r} holds no export: finish the fine-tuning run "
                        "first") from None  # fmt: skip
    if "classifier" not in spec:
        raise UserError(
            f"the teacher {path} is an encoder without a classifier (a pretraining export): "
            "fine-tune it first with configs/finetune.py"
        )
    return spec


def teacher_labelled_ids(teacher: str, source) -> np.ndarray | None:
    """The ids of `source` (the train split) the teacher was fine-tuned on: its workdir's
    train_subset.json, or None when it was fine-tuned on the whole split (UserError when
    neither can be told, or the subset was drawn from another split)."""
    export, _ = checkpoint.find_export(teacher)
    workdir = fileio.parent(export)
    subset_path = fileio.join(workdir, subsets.TRAIN_SUBSET_FILE)
    if fileio.exists(subset_path):
        ids, record = subsets.read_subset(subset_path)
        this_split = (source.num_examples, source.name)
        if (record.get("split_examples"), record.get("source")) != this_split:
            raise UserError(
                f"the teacher was fine-tuned on {record.get('num_ids')} examples of "
                f"{record.get('source')} ({record.get('split_examples')} images), this run "
                f"trains on {source.name} ({source.num_examples}): distil on the teacher's "
                "dataset, or set --config.distill_label_weight=0"
            )
        return ids
    config_path = fileio.join(workdir, "config.json")
    teacher_config = json.loads(fileio.read_text(config_path)) if fileio.exists(config_path) else {}
    if teacher_config.get("label_fraction") == 1.0 and not teacher_config.get("label_subset_file"):
        return None
    raise UserError(
        f"distill_label_weight > 0 needs the teacher's labelled examples, but {workdir} has no "
        f"{subsets.TRAIN_SUBSET_FILE} (nor the config.json of a run on all labels): pass the "
        "fine-tuning run's workdir as --config.teacher, or set --config.distill_label_weight=0"
    )
