"""Every name a search is written under, defined once (after MLflow's own `mlflow.utils.mlflow_tags`).

A search is one MLflow parent run with one child run per trial; Ray Tune carries each trial's
assignment as a plain dict. These are the keys of both. Metric names of a trial's evaluation are
the trainables' (`trainables.evaluate`); the objectives are `search_spaces.params.OBJECTIVES`.
"""

from __future__ import annotations

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from trainables.evaluate import HOLDOUT, SHAPE_BIAS

__all__ = ["MLFLOW_PARENT_RUN_ID", "MLFLOW_RUN_NAME"]  # MLflow's, re-exported beside ours

# --- a trial's assignment in Ray (its `trial.config`), also tags of its child run -------------
CONFIGURATION = "configuration"  # c000 (the dense reference), c001, ...
SEED = "seed"
PARAMS = "params"  # `Params.to_dict()`
TRIAL = "trial"  # the trial config `trainables` validates

# --- what a trial reports to Tune beside its metrics ------------------------------------------
EPOCH = "epoch"
TRACKING_UNSENT = "tracking_unsent"  # metric values held while the tracking server is away
FAILED = "failed"  # the reason of a deterministic failure, with NaN objectives

# --- parent run: tags ----------------------------------------------------------------------------
SEARCH_ID = "search_id"
SEARCH_NAME = "search_name"
SEARCH_PATH = "search_path"  # Ray Tune's state and the trials' checkpoints
GIT_COMMIT = "git_commit"
DATA_FINGERPRINT = "data_fingerprint"
VERSION_PREFIX = "version."  # version.torch, version.mlflow, ...
FAILURE_REASON = "failure_reason"

# --- parent run: params (others: the sampler's settings, see search.opening) --------------------
SEEDS = "seeds"
EPOCHS = "epochs"  # also a child run param
REFERENCE_POINT = "reference_point"
ARCH = "arch"

# --- parent run: metrics and artifacts ------------------------------------------------------------
HYPERVOLUME = "hypervolume"
FRONT_SIZE = "front_size"
STOPPED_CONFIGURATIONS = "stopped_configurations"
EPOCHS_SAVED = "epochs_saved"
EPOCHS_TRAINED = "epochs_trained"
IMPORTANCE_PREFIX = "importance."  # importance.<objective>.<parameter>
SEARCH_SPEC = "search_spec.yaml"

# --- child run: tags --------------------------------------------------------------------------------
RAY_TRIAL_ID = "ray_trial_id"
RAY_NODE_ID = "ray_node_id"
DENSE_REFERENCE = "dense_reference"
RESTARTS = "restarts"
RESUMED_AFTER_EPOCH = "resumed_after_epoch"
STOPPED_AT_EPOCH = "stopped_at_epoch"  # early stopping ended it there: partial, never a result
ERROR = "error"
CHECKPOINT_URI = "checkpoint_uri"
LOG_MODEL_ERROR = "log_model_error"

# --- child run: params and artifacts ------------------------------------------------------------
TOPK_PREFIX = "topk."  # topk.<placement>: the fraction the trial's model used there
TRIAL_CONFIG = "trial_config.yaml"

# --- metrics a search reads back ----------------------------------------------------------------
SHAPE_BIAS_HOLDOUT = SHAPE_BIAS + HOLDOUT  # the report set's shape bias: the number to quote
