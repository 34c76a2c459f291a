"""Distillation (SimCLR v2, section 2, step 3): a fine-tuned teacher labels the unlabelled data.

The teacher is an exported classifier (a configs/finetune.py run: encoder + linear layer, any
backbone), frozen and in inference mode. The student (config.model: the same or a smaller
backbone) sees the same augmented views and is trained on the teacher's soft targets at
temperature tau over the whole train split, labels unused (ssl_jax.losses.distillation). The
teacher's variables are part of the extra state, so a resumed run needs only its workdir.
Reported: the student's top-1 / top-5 (`distill_top1`) beside the teacher's (`teacher_top1`,
from its export).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import checkpoint, losses
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

    def loss(self, outputs, inputs):
        teacher_logits = self.teacher.apply(inputs.extra["teacher"], inputs.views)["logits"]
        student_logits = outputs["logits"]  # [VB, C]
        loss = losses.distillation(student_logits, teacher_logits, self.config.distill_temperature)
        agreement = jnp.argmax(student_logits, -1) == jnp.argmax(teacher_logits, -1)
        return loss, {"teacher_agreement": jnp.mean(agreement)}, {}

    def extra_results(self) -> dict:
        classifier = self.teacher_spec()["classifier"]
        return {**super().extra_results(), "method": "distill", "encoder": "student",
                "teacher": self.config.teacher, "teacher_top1": classifier.get("top1")}  # fmt: skip


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
