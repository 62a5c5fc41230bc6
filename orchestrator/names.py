"""The names a search is written under in MLflow and Ray (after MLflow's own `mlflow.utils.mlflow_tags`).

A search is one MLflow parent run with one child run per trial; Ray Tune carries each trial's
assignment as a plain dict. These are the keys of both. The names of a trial's metrics are the
trainables' (`trainables.metrics`), and the objectives among them `search_spaces.params.OBJECTIVES`.
"""

from __future__ import annotations

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from trainables.metrics import CUE_DECISION_RATE, CUE_DECISION_RATE_HOLDOUT, EPOCH, SHAPE_BIAS_HOLDOUT

# MLflow's and the trainables' names, re-exported beside ours.
__all__ = [
    "CUE_DECISION_RATE",
    "CUE_DECISION_RATE_HOLDOUT",
    "EPOCH",
    "MLFLOW_PARENT_RUN_ID",
    "MLFLOW_RUN_NAME",
    "SHAPE_BIAS_HOLDOUT",
]

# --- a trial's assignment in Ray (its `trial.config`), also tags of its child run -------------
CONFIGURATION = "configuration"  # c000 (the dense reference), c001, ...
SEED = "seed"
STAGE = "stage"  # which stage trained it: the search (Optuna's), or the confirmation on fresh seeds
SEARCH_STAGE, CONFIRM_STAGE = "search", "confirm"
PARAMS = "params"  # `Params.to_dict()`
TRIAL = "trial"  # the trial config `trainables` validates
ASSIGNMENT = "assignment"  # a confirmation trial's config: {"assignment": the four keys above and STAGE}

# --- what a trial reports to Tune beside its metrics (`trainables.metrics`) -------------------
TRACKING_UNSENT = "tracking_unsent"  # metric values held while the tracking server is away
MLFLOW_RUN_ID = "mlflow_run_id"  # reported with each epoch: the driver closes a stopped trial's run by id
FAILED = "failed"  # the reason of a deterministic failure, with NaN objectives

# --- parent run: tags ----------------------------------------------------------------------------
SEARCH_ID = "search_id"
SEARCH_NAME = "search_name"
SEARCH_PATH = "search_path"  # Ray Tune's state and the trials' checkpoints
GIT_COMMIT = "git_commit"
DATA_FINGERPRINT = "data_fingerprint"
VERSION_PREFIX = "version."  # version.torch, version.mlflow, ...
FAILURE_REASON = "failure_reason"
STATE_FORMAT = "state_format"  # the layout of the search's Ray state, which resume must be able to read
OPTUNA_STORAGE = "optuna_storage"  # where its study is (password hidden)
CONFIRMATION = "confirmation"  # the latest confirmation round: {configurations, seeds, path, status} (JSON)

# --- parent run: params (others: the sampler's settings, see search.opening) --------------------
SEEDS = "seeds"
CONSTRAINTS = "constraints"  # {metric: floor}, as the YAML gives them (JSON)
EPOCHS = "epochs"  # also a child run param
REFERENCE_POINT = "reference_point"
ARCH = "arch"

# --- parent run: metrics and artifacts ------------------------------------------------------------
HYPERVOLUME = "hypervolume"
FRONT_SIZE = "front_size"
STOPPED_CONFIGURATIONS = "stopped_configurations"
EPOCHS_SAVED = "epochs_saved"
EPOCHS_TRAINED = "epochs_trained"
REUSED_PROPOSALS = "reused_proposals"  # proposals of a network already trained: told its results, not trained
FRONT_PREFIX = "front."  # front.<configuration>.<name>: the report's bootstrap (p_front, *_ci_low, *_vs_dense, ...)
CONFIRMED_PREFIX = "confirmed."  # confirmed.<configuration>.<objective>_gain, _ci_low, _ci_high, _p_adjusted
P_FRONT = "p_front"  # the share of bootstrap resamples in which a configuration is on the feasible front
IMPORTANCE_PREFIX = "importance."  # importance.<objective>.<parameter>
SEARCH_SPEC = "search_spec.yaml"
FRONT_TABLE = "pareto_table.json"  # the front as an MLflow table (`MlflowClient.log_table`)

# --- child run: tags --------------------------------------------------------------------------------
RAY_TRIAL_ID = "ray_trial_id"
RAY_NODE_ID = "ray_node_id"
DENSE_REFERENCE = "dense_reference"
RESTARTS = "restarts"
RESUMED_AFTER_EPOCH = "resumed_after_epoch"
STOPPED_AT_EPOCH = "stopped_at_epoch"  # early stopping ended it there: partial, never a result
ERROR = "error"
PARETO_FRONT = "pareto_front"  # 'true' on the child runs of the front's configurations, else 'false'
NETWORK = "network"  # what the trial trains, e.g. 'layer1 4/64, layer2 1/16' (k of positions), or 'dense'
CHECKPOINT_URI = "checkpoint_uri"
# The SHA-256 of the final state.pt, recorded as the trial ends: promote refuses a file that differs.
CHECKPOINT_SHA256 = "checkpoint_sha256"
# On a model version: the SHA-256 of its weights (`weights_digest`), checked when it is evaluated or gated.
WEIGHTS_SHA256 = "weights_sha256"
LOG_MODEL_ERROR = "log_model_error"

# --- child run: params and artifacts ------------------------------------------------------------
TOPK_PREFIX = "topk."  # topk.<placement>: the fraction the trial's model used there
K_PREFIX = "k."  # k.<placement>: the positions per channel Top-K keeps there
KEPT_PREFIX = "kept."  # kept.<placement>: k / (H * W), the share it keeps
TRIAL_CONFIG = "trial_config.yaml"

# --- Optuna: study and trial user attributes ---------------------------------------------------------
REUSED_CONFIGURATION = "reused_configuration"  # a proposal of this configuration's network: not trained
MLFLOW_PARENT_RUN_ID_ATTR = "mlflow_parent_run_id"  # each trial's: the search's MLflow parent run
ENDED_EARLY = "ended_early"  # the study's: why the searcher stopped before `configurations`
