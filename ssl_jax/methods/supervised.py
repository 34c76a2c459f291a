"""Supervised training of a classifier on the encoder: fine-tuning and the augmented linear probe.

Two protocols of the papers, one method (configs/finetune.py, and the `augmented` protocol of
configs/linear_eval.py):
  fine-tuning   the whole encoder and a new linear layer trained on a labelled subset of the
                train split (`label_fraction`: SimCLR v2's 1% / 10%), started from a pretrained
                encoder (`pretrained`) or, for the supervised baseline, from scratch;
  augmented     the linear layer alone on the FROZEN encoder (`frozen_encoder`): the encoder's
                BatchNorm in inference mode, its parameters never updated (SimCLR appendix B.5,
                BYOL appendix C.1), views through random resized crop and flip.
Fine-tuning starts the linear layer on the encoder's features (`finetune_from="encoder"`) or,
as SimCLR v2 does (section 2; google-research/simclr tf2/model.py `ft_proj_selector=1`), on the
output of the pretrained projector's first layer (`finetune_from="projector_layer_1"`: Linear ->
BN -> ReLU, loaded from the export's projector_layer_1/ and fine-tuned with the encoder).
The classifier is evaluated by its own top-1 / top-5 on the test split, and exported beside the
encoder (export/head, and export/projector_layer_1 when it has that layer) so that distillation
can use it as a teacher.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax import checkpoint, models
from ssl_jax.errors import UserError
from ssl_jax.methods.base import MethodBase
from ssl_jax.models import Classifier
from ssl_jax.models.classifier import ProjectorLayer

# config.finetune_from: what the linear layer reads.
FINETUNE_FROM = ("encoder", checkpoint.PROJECTOR_LAYER)


def classification_metrics(logits, labels) -> tuple[jax.Array, dict]:
    """Mean softmax cross-entropy and top-1 of [N, C] logits against int labels [N]."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    top1 = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    return loss, {"train_top1": top1}


@dataclasses.dataclass(frozen=True)
class Supervised(MethodBase):
    has_classifier = True

    @property
    def result_name(self) -> str:
        return "augmented" if self.config.frozen_encoder else "finetune"

    def validate(self) -> None:
        super().validate()
        if bool(self.config.pretrained) == bool(self.config.from_scratch):
            raise UserError("set --config.pretrained=PATH (a pretraining workdir or its export/) "
                            "to fine-tune, or --config.from_scratch=True for the supervised "
                            "baseline, not both")  # fmt: skip
        if self.config.pretrained:
            pretrained_spec(self.config)  # the export exists and fits config.model
        if self.finetune_from not in FINETUNE_FROM:
            raise UserError(f"finetune_from={self.finetune_from!r}: use "
                            f"{' or '.join(FINETUNE_FROM)}")  # fmt: skip
        if self.finetune_from == checkpoint.PROJECTOR_LAYER:
            if self.config.frozen_encoder:
                raise UserError("finetune_from=projector_layer_1 applies to fine-tuning; the "
                                "frozen-encoder (augmented linear) protocol trains on the "
                                "encoder's features: use finetune_from=encoder")  # fmt: skip
            if not self.config.pretrained:
                raise UserError("finetune_from=projector_layer_1 needs a pretrained projector "
                                "and the from-scratch baseline has none: use "
                                "--config.finetune_from=encoder")  # fmt: skip
            projector_spec(self.config)  # the export has the layer

    @property
    def finetune_from(self) -> str:
        return self.config.get("finetune_from", "encoder")

    def network(self) -> Classifier:
        if self.num_classes < 1:
            raise UserError(f"{self.config.dataset} has no labels: supervised training needs "
                            "a labelled dataset")  # fmt: skip
        backbone = models.build_backbone(self.config)
        projector = None
        if self.finetune_from == checkpoint.PROJECTOR_LAYER:
            # The pretrained layer's structure and names (models.MLPHead's dense1, bn1), at the
            # run's compute dtype, so its variables load as exported.
            layer = projector_spec(self.config)
            projector = ProjectorLayer(layer["width"], layer["batch_norm"], dtype=backbone.dtype)
        return Classifier(backbone, max(self.num_classes, 1), self.config.frozen_encoder,
                          projector=projector)  # fmt: skip

    def loss(self, outputs, inputs):
        labels = jnp.tile(inputs.labels, len(inputs.views))  # [VB], views stacked view-major
        loss, metrics = classification_metrics(outputs["logits"], labels)
        return loss, metrics, {}

    def load_pretrained(self, state):
        if not self.config.pretrained:
            return state
        variables = load_encoder_variables(self.config.pretrained)
        params = {**state.params, self.encoder_name: variables["params"]}
        stats = dict(state.batch_stats)
        if self.encoder_name in stats:  # a ViT has no BatchNorm statistics
            stats[self.encoder_name] = variables["batch_stats"]
        if self.finetune_from == checkpoint.PROJECTOR_LAYER:
            _, layer = checkpoint.load_projector_layer(self.config.pretrained)
            layer = jax.tree.map(np.asarray, layer)
            params["projector"] = layer["params"]
            if layer["batch_stats"]:  # a layer without BatchNorm (MoCo v2) has none
                stats["projector"] = layer["batch_stats"]
        return state.replace(params=params, batch_stats=stats)

    def extra_results(self) -> dict:
        """Which encoder was trained on, for the report's row beside the pretraining's."""
        if not self.config.pretrained:
            results = {"method": "supervised", "encoder": "random init", "pretrain_epochs": 0}
        else:
            spec = pretrained_spec(self.config)
            results = {"method": spec.get("method"), "encoder": "trained",
                       "pretrain_epochs": spec.get("epochs")}  # fmt: skip
        if not self.config.frozen_encoder:  # what the linear layer was fine-tuned on
            results["finetune_from"] = self.finetune_from
        return results

    def frozen_parts(self) -> tuple[str, ...]:
        return (self.encoder_name,) if self.config.frozen_encoder else super().frozen_parts()


def pretrained_spec(config) -> dict:
    """The pretrained export's encoder.json, checked against config.model (UserError)."""
    try:
        _, spec = checkpoint.find_export(config.pretrained)
    except FileNotFoundError:
        raise UserError(f"pretrained={config.pretrained!r} holds no exported encoder "
                        f"({checkpoint.ENCODER_SPEC} not found): pass a finished pretraining "
                        "workdir or its export/ folder") from None  # fmt: skip
    # The compute dtype and drop-path may differ (fine-tune in float32 what was pretrained in
    # bfloat16): models.RUN_FIELDS.
    mine = {k: v for k, v in models.architecture_spec(models.build_backbone(config)).items()
            if k not in models.RUN_FIELDS}  # fmt: skip
    theirs = {k: v for k, v in spec["architecture"].items() if k not in models.RUN_FIELDS}
    if mine != theirs:
        flags = " ".join(f"--config.model.{k}={v:g}" if isinstance(v, float) else
                         f"--config.model.{k}={v}"
                         for k, v in models.model_config(theirs).items())  # fmt: skip
        raise UserError(
            f"the pretrained encoder is {models.describe(theirs)}, the config builds "
            f"{models.describe(mine)}: add {flags}"
        )
    return spec


def projector_spec(config) -> dict:
    """The pretrained export's projector_layer_1 entry {in_dim, width, batch_norm} (UserError
    when it has none)."""
    spec = pretrained_spec(config)
    if checkpoint.PROJECTOR_LAYER not in spec:
        raise UserError(f"pretrained={config.pretrained!r} has no exported projector layer (its "
                        "method has no MLP projector, or it was exported before projector "
                        "layers were): re-export it by running its pretraining command again on "
                        "its workdir, or use --config.finetune_from=encoder")  # fmt: skip
    return spec[checkpoint.PROJECTOR_LAYER]


def load_encoder_variables(path: str) -> dict:
    """The exported encoder's {"params", "batch_stats"} as host arrays."""
    _, variables = checkpoint.load_encoder(path)
    return jax.tree.map(np.asarray, variables)
