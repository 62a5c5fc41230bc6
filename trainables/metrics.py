"""The names of the metrics a trial reports, defined once and free of torch: the search's vocabulary
(`search_spaces.params.OBJECTIVES`), the orchestrator's MLflow names and the command line all use
them without importing a model.
"""

from __future__ import annotations

# The two objectives, then the diagnostics every evaluation reports beside them.
ACCURACY, SHAPE_BIAS = "accuracy", "shape_bias"
SHAPE_ACCURACY, TEXTURE_ACCURACY = "shape_accuracy", "texture_accuracy"
# The share of scored conflict images whose decision is the shape or the texture: shape bias's validity.
CUE_DECISION_RATE = "cue_decision_rate"
HOLDOUT = "_holdout"  # suffix of a metric measured on the report set, which nothing selects on
STIMULI_METRICS = (SHAPE_BIAS, SHAPE_ACCURACY, TEXTURE_ACCURACY, CUE_DECISION_RATE)
EVALUATION_METRICS = (ACCURACY, *STIMULI_METRICS)
HOLDOUT_METRICS = tuple(name + HOLDOUT for name in STIMULI_METRICS)  # data.split: half
SHAPE_BIAS_HOLDOUT = SHAPE_BIAS + HOLDOUT  # the report set's shape bias: the number to quote
CUE_DECISION_RATE_HOLDOUT = CUE_DECISION_RATE + HOLDOUT

# What the training loop adds: the epoch (0: evaluated as loaded), its loss and its speed.
EPOCH, TRAIN_LOSS, IMAGES_PER_S = "epoch", "train_loss", "images_per_s"
TRAINING_METRICS = (EPOCH, TRAIN_LOSS, *EVALUATION_METRICS, IMAGES_PER_S)


def per_category(metric: str, category: str) -> str:
    """The name of a metric's value on one category: `shape_bias_holdout.cat`."""
    return f"{metric}.{category}"
