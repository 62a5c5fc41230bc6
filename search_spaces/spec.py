"""An experiment YAML file, validated into a typed `SearchSpec` before Ray starts.

The file holds the base trial (data, model stem, training recipe), the search space (`space.py`: Top-K
fraction, placement sets, training knobs), the objectives, the sampler, how many configurations
and seeds, resources, and where results go (Ray storage, MLflow, Optuna). Command-line
`key=value` overrides edit the parsed YAML before validation, so they are checked the same way.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from search_spaces.constraints import Floor, floors_of
from search_spaces.locations import (
    OPTUNA_SCHEMES,
    TRACKING_SCHEMES,
    absolute_sqlite,
    check_url,
    resolve_tracking_uri,
)
from search_spaces.networks import FeatureMap, Network, count_networks, feature_maps, fixed_placements, network_of
from search_spaces.params import OBJECTIVES, Params, placement_key
from search_spaces.space import FloatRange, SearchSpace
from trainables import files
from trainables.config import ModelConfig, TrainingConfig, check_sections
from trainables.data import DataSettings
from trainables.files import YamlError, read_yaml
from trainables.messages import bounded, describe, redact
from trainables.models import ARCHITECTURES, check_placements, expand_preset
from trainables.schema import Strict

# `SearchSpec.trial_config`'s shape: a configuration's parameters and a seed -> its trial config.
MakeTrial = Callable[[Params, int], dict[str, Any]]


class ReferencePoint(Strict):
    """The corner the hypervolume is measured from: the area the front dominates above it."""

    accuracy: float = Field(0.0, ge=0.0, le=1.0)
    shape_bias: float = Field(0.0, ge=0.0, le=1.0)


class EarlyStopping(Strict):
    """Replicate-aware successive halving on both objectives (orchestrator/search/early_stopping.py)."""

    rungs: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)  # epochs at which configurations are compared
    reduction_factor: float = Field(3.0, gt=1.0)  # the best 1/reduction_factor continue at each rung

    @field_validator("rungs")
    @classmethod
    def _increasing(cls, rungs: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(rungs)):
            raise ValueError(f"rungs {rungs} must be strictly increasing epochs")
        return rungs


class Confirm(Strict):
    """After the search: retrain the `top` chosen configurations and the dense reference on `seeds` fresh seeds."""

    top: int = Field(1, ge=1)
    # Welch's test needs two values a side to see any spread.
    seeds: int = Field(3, ge=2)
    # p_front: the likeliest on the front; accuracy / shape_bias: the highest seed mean among the feasible.
    by: Literal["p_front", "accuracy", "shape_bias"] = "p_front"


class Resources(Strict):
    cpu: float = Field(1.0, gt=0)
    # Fractional GPUs are a scheduling label in Ray: several trials share one GPU's memory.
    gpu: float = Field(0.0, ge=0)


class SearchSpec(Strict):
    """A whole experiment: validated, with every path and URI made absolute."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    data: DataSettings
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    search: SearchSpace
    objectives: list[Literal[OBJECTIVES]] = Field(default=list(OBJECTIVES))  # type: ignore[valid-type]
    # Floors on a configuration's seed means (`search_spaces.constraints`): absolute (0.5) or relative
    # to the dense reference ('dense-0.2'). Optuna is told them as constraints; a configuration below
    # one is infeasible: shown, never on the front. `accuracy_floor: X` is `constraints: {accuracy: X}`.
    constraints: dict[str, float | str] = Field(default_factory=dict)
    accuracy_floor: float | None = Field(None, ge=0.0, le=1.0)
    # The hypervolume's reference: a point, or `dense` for the dense reference's seed means (then
    # the hypervolume is the area the front gains over the dense model).
    reference_point: Literal["dense"] | ReferencePoint = Field(default_factory=ReferencePoint)
    # Off unless set: stop configurations that fall behind at rung epochs (all their seeds at once).
    early_stopping: EarlyStopping | None = None
    # Off unless set: test the chosen configurations' gains over dense on fresh seeds (orchestrator/confirmation.py).
    confirm: Confirm | None = None
    # Random by default: on the quickstart's space it matched or beat TPE, NSGA-II and GP in
    # replayed searches (bench/sampler_efficiency.py); the others stay one word away.
    sampler: Literal["tpe", "nsga2", "random", "gp", "grid"] = "random"
    sampler_seed: int = Field(0, ge=0)
    configurations: int = Field(ge=2, description="Optuna configurations plus the dense reference")
    seeds: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    concurrency: int = Field(1, ge=1)
    resources: Resources = Field(default_factory=Resources)
    max_failures: int = Field(2, ge=0)
    # Log every trial's final model to its MLflow run (its Models tab): about 45 MB a ResNet-18.
    log_models: bool = False
    storage_path: str = "ray_results"
    tracking_uri: str | None = None
    experiment: str | None = None
    optuna_storage: str = "sqlite:///optuna.db"
    address: str | None = None

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_scheme(cls, uri: str | None) -> str | None:
        return uri if uri is None else check_url(uri, TRACKING_SCHEMES, "tracking_uri", allow_path=True)

    @field_validator("optuna_storage")
    @classmethod
    def _optuna_scheme(cls, url: str) -> str:
        return check_url(url, OPTUNA_SCHEMES, "optuna_storage")

    @field_validator("address")
    @classmethod
    def _ray_address(cls, address: str | None) -> str | None:
        if address is None or address in ("auto", "local"):
            return address
        host_port = address.removeprefix("ray://")
        host, _, port = host_port.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"{bounded(address)} is not a Ray address: use host:port (the head's GCS port, "
                "e.g. 10.0.0.5:6379), ray://host:10001, 'auto' or leave it unset"
            )
        return address

    @field_validator("storage_path")
    @classmethod
    def _storage_scheme(cls, path: str) -> str:
        if "://" in path:
            # Ray hands a URI to pyarrow: let it say now whether it knows the scheme.
            import pyarrow.fs

            try:
                pyarrow.fs.FileSystem.from_uri(path)
            except Exception as error:
                raise ValueError(
                    f"{bounded(redact(path))} is not a storage URI Ray can use ({' '.join(str(error).split())[:200]})"
                ) from None
        return path

    @model_validator(mode="after")
    def _batches_fit_the_data(self) -> SearchSpec:
        images = self.data.train_images()
        largest = max([self.training.batch_size, *(self.search.batch_size or [])])
        if images is not None and largest > images:
            raise ValueError(
                f"batch size {largest} is larger than data.train_size {images}: "
                "an epoch would have no full batch; lower training.batch_size / search.batch_size"
            )
        return self

    @field_validator("objectives")
    @classmethod
    def _both(cls, objectives: list[str]) -> list[str]:
        if sorted(objectives) != sorted(OBJECTIVES):
            raise ValueError(f"objectives must be both of {list(OBJECTIVES)} (maximised), got {objectives}")
        return objectives

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds repeat: {seeds}")
        return seeds

    @model_validator(mode="before")
    @classmethod
    def _expand_presets(cls, raw: Any) -> Any:
        """`[after_every_pool]` becomes the placements it names for model.arch, before anything else."""
        search, model = (raw.get("search"), raw.get("model")) if isinstance(raw, dict) else (None, None)
        arch = model.get("arch", "resnet18") if isinstance(model, dict) else "resnet18"
        if not (isinstance(search, dict) and isinstance(search.get("placements"), list) and arch in ARCHITECTURES):
            return raw  # malformed: the field validators say what is wrong
        sets = [
            expand_preset(names, arch) if isinstance(names, list) and all(isinstance(n, str) for n in names) else names
            for names in search["placements"]
        ]
        return {**raw, "search": {**search, "placements": sets}}

    @model_validator(mode="after")
    def _placements_fit_arch(self) -> SearchSpec:
        for names in self.search.placements:
            try:
                check_placements(dict.fromkeys(names, 1.0), self.model.arch)
            except ValueError as error:
                raise ValueError(f"search.placements: {error}") from None
        return self

    @field_validator("constraints")
    @classmethod
    def _floors(cls, constraints: dict[str, float | str]) -> dict[str, float | str]:
        floors_of(constraints)  # ValueError naming the bad one and what is valid
        return constraints

    @model_validator(mode="after")
    def _every_placement_searches_something(self) -> SearchSpec:
        """A fraction that cannot change any k searches nothing: refused, naming the map and the k it keeps."""
        space, maps = self.search, self.feature_maps()
        low, high = space.fraction.low, space.fraction.high
        for names in space.placements:
            fixed = fixed_placements([maps[n] for n in names], low, high)
            if space.fraction_per_placement and fixed:
                raise ValueError(
                    f"search.fraction_per_placement: {self._fixed_k(fixed[0])}, so fraction.{fixed[0].name} "
                    "searches nothing; drop it from that set or widen search.fraction"
                )
            if len(fixed) == len(names):
                raise ValueError(
                    f"search.placements {placement_key(names)}: {'; '.join(self._fixed_k(m) for m in fixed)}, so "
                    "this set is one network; widen search.fraction or drop the set"
                )
        return self

    def _fixed_k(self, feature_map: FeatureMap) -> str:
        """ "layer3's map is 2x2 at 32 px (...): every fraction in [0.02, 0.5) keeps k = 1 of 4 positions (...)"."""
        low, high = self.search.fraction.low, self.search.fraction.high
        (k,) = feature_map.possible_k(low, high)
        needs = (k + 1) / feature_map.positions
        # Where the next k starts exactly at the range's end, that end alone would give it.
        closing = ")" if needs == high else "]"
        text = (
            f"{feature_map.name}'s map is {feature_map.height}x{feature_map.width} at {self.data.image_size} px "
            f"({self.model.arch}, {self.model.stem} stem): every fraction in [{low:g}, {high:g}{closing} keeps "
        )
        if k == feature_map.positions:
            what = "its only position" if k == 1 else f"all {k} positions"
            return text + f"{what} (Top-K does nothing there)"
        return (
            text + f"k = {k} of {feature_map.positions} positions (k = {k + 1} needs a fraction of {needs:.4g} or more)"
        )

    def feature_maps(self) -> dict[str, FeatureMap]:
        """Each searched placement's output map at this spec's architecture, stem and image size."""
        names = [n for names in self.search.placements for n in names]
        return feature_maps(names, self.data.image_size, self.model.stem, self.model.arch)

    def network_of(self, params: Params) -> Network:
        """The network a configuration trains: the k it keeps at each placement, and its knobs."""
        return network_of(params, self.feature_maps())

    def distinct_networks(self) -> int | None:
        """How many distinct Top-K networks the space holds (None: a searched float knob makes it unbounded)."""
        space = self.search
        domains = space.knob_domains()
        if self.sampler == "grid":
            choices = math.prod(len(d.grid_values()) if isinstance(d, FloatRange) else len(d) for d in domains.values())
            grid: list[float] | None = space.fraction.grid_values()
        elif any(isinstance(d, FloatRange) for d in domains.values()):
            return None
        else:
            choices, grid = math.prod(len(d) for d in domains.values() if isinstance(d, list)), None
        maps = self.feature_maps()
        sets = [[maps[n] for n in names] for names in space.placements]
        low, high = space.fraction.low, space.fraction.high
        return count_networks(sets, low, high, space.fraction_per_placement, grid, choices)

    def network_notes(self) -> list[str]:
        """Placements a shared fraction leaves at one k while the others of their set vary: said at the start."""
        if self.search.fraction_per_placement:
            return []
        maps = self.feature_maps()
        return [
            f"note: in {placement_key(names)}, {self._fixed_k(m)}; only the other placements of that set vary"
            for names in self.search.placements
            for m in fixed_placements([maps[n] for n in names], self.search.fraction.low, self.search.fraction.high)
        ]

    def floors(self) -> list[Floor]:
        """The search's constraints as floors (an `accuracy_floor` among them)."""
        return floors_of(self.constraints, self.accuracy_floor)

    @model_validator(mode="after")
    def _rungs_inside_training(self) -> SearchSpec:
        if self.early_stopping and self.early_stopping.rungs[-1] >= self.training.epochs:
            raise ValueError(
                f"early_stopping.rungs {self.early_stopping.rungs} must all lie before the last epoch "
                f"(training.epochs {self.training.epochs}): a rung at the end stops nothing"
            )
        return self

    @model_validator(mode="after")
    def _grid_is_complete(self) -> SearchSpec:
        if self.sampler != "grid":
            return self
        space = self.search
        if space.fraction_per_placement and len(space.placements) > 1:
            raise ValueError(
                f"sampler: grid searches per-placement fractions in one placement set, got {len(space.placements)} "
                "(each set has its own parameters, and a grid is one product); keep one set, set "
                "search.fraction_per_placement: false, or use tpe, nsga2 or random"
            )
        ungridded = [f"search.{name}" for name, value_range in space.float_ranges().items() if value_range.grid is None]
        if ungridded:
            raise ValueError(
                f"sampler: grid needs grid points for {', '.join(ungridded)}: add grid: <count> "
                "(spaced from low to high) or grid: [values]"
            )
        return self

    @model_validator(mode="after")
    def _enough_distinct_networks(self) -> SearchSpec:
        distinct = self.distinct_networks()
        if distinct is not None and self.configurations > distinct + 1:
            where = "grid's points" if self.sampler == "grid" else "space"
            raise ValueError(
                f"configurations {self.configurations} exceeds the {distinct} distinct networks the {where} "
                f"hold{'' if self.sampler == 'grid' else 's'} (fractions that keep the same k at every placement "
                f"are one network) plus the dense reference: set configurations: {distinct + 1} to run them all"
            )
        return self

    @model_validator(mode="after")
    def _confirm_fits(self) -> SearchSpec:
        if self.confirm is not None and self.confirm.top > self.configurations - 1:
            raise ValueError(
                f"confirm.top {self.confirm.top} exceeds the {self.configurations - 1} configurations the sampler "
                f"proposes (configurations {self.configurations} includes the dense reference)"
            )
        return self

    @model_validator(mode="after")
    def _sections_agree(self) -> SearchSpec:
        check_sections(self.data, self.model, self.training)
        return self

    @model_validator(mode="after")
    def _topk_comes_from_the_search(self) -> SearchSpec:
        if self.model.topk:
            raise ValueError("model.topk is set by the search (search.placements, search.fraction); leave it empty")
        return self

    @property
    def mlflow_experiment(self) -> str:
        return self.experiment or self.name

    def resolved_tracking_uri(self) -> str:
        """Config value, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db; local paths made absolute."""
        return resolve_tracking_uri(self.tracking_uri)

    def resolved_optuna_storage(self) -> str:
        return absolute_sqlite(self.optuna_storage)

    def resolved_storage_path(self) -> str:
        """Ray trial storage: an absolute local (or shared) path, or a URI such as s3://bucket/x."""
        if "://" in self.storage_path:
            return self.storage_path
        return str(Path(self.storage_path).expanduser().resolve())

    def trial_config(self, params: Params | Mapping[str, Any], seed: int) -> dict[str, Any]:
        """The plain trial dict for one sampled configuration and seed."""
        if not isinstance(params, Params):
            params = Params.from_dict(params)
        # Start from the validated base sections, so a new field is never dropped on the way.
        training = self.training.model_dump(mode="json") | params.knobs()
        if self.early_stopping:  # a trial judged at a rung has its state there
            training["checkpoint_epochs"] = sorted({*training["checkpoint_epochs"], *self.early_stopping.rungs})
        model = self.model.model_dump(mode="json") | {"topk": params.topk()}
        return {"data": self.data.model_dump(mode="json"), "model": model, "training": training, "seed": seed}


class ConfigError(ValueError):
    """A bad experiment file or override, as one line naming the key and what is valid."""


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Set a dotted key in the parsed YAML: `search.fraction.high=0.3`, `seeds=[0,1,2]`."""
    try:
        files.apply_override(raw, assignment)
    except ValueError as error:
        raise ConfigError(str(error)) from None


# What a resumed search takes from the config file it is resumed with: where things are, and the
# resources a trial asks of the cluster it now runs on. The rest (the space, the sampler,
# configurations, seeds, data, training) is the search's own, as it started. The Optuna study must
# be the one it started with (`orchestrator.search.opening` checks); its URL may be written anew.
RESUME_MAY_CHANGE = ("name", "storage_path", "tracking_uri", "experiment", "optuna_storage", "address", "resources")


def may_change_on_resume(assignment: str) -> bool:
    """Whether a `key=value` override sets something a resumed search takes from the config file."""
    return assignment.split("=", 1)[0].strip().split(".")[0] in RESUME_MAY_CHANGE


def resumed_spec(
    saved: Mapping[str, Any], given: SearchSpec, overrides: Sequence[str] = (), search_id: str = "the search"
) -> SearchSpec:
    """The settings a search resumes with: those it started with, where things are from `given`.

    An override of any other setting that would change it is refused (ConfigError): a search
    keeps one set of settings from its first trial to its last.
    """
    raw = {k: copy.deepcopy(v) for k, v in saved.items() if k not in RESUME_MAY_CHANGE}
    raw |= {k: v for k, v in given.model_dump(mode="json").items() if k in RESUME_MAY_CHANGE}
    try:
        kept = SearchSpec.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"the saved settings of {search_id} no longer validate: {describe(error)}") from None
    changed = copy.deepcopy(raw)
    given_keys = []
    for assignment in overrides:  # in order, as `load_spec` applies them: the last one wins
        if not may_change_on_resume(assignment):
            apply_override(changed, assignment)
            given_keys.append(assignment.split("=", 1)[0].strip())
    try:
        same = SearchSpec.model_validate(changed) == kept
    except ValidationError:
        same = False
    if not same:
        key = next((k for k in given_keys if _lookup(changed, k) != _lookup(raw, k)), given_keys[-1])
        raise ConfigError(
            f"override {key}={bounded(_lookup(changed, key))} would change {search_id}, which started "
            f"with {key} = {bounded(_lookup(raw, key))}: a resumed search keeps its settings; drop the "
            f"override, or start a new search (only {', '.join(RESUME_MAY_CHANGE)} may change)"
        )
    return kept


def _lookup(raw: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted key of parsed settings (None where it is not set)."""
    node: Any = raw
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> SearchSpec:
    """Read, override and validate an experiment file; raise ConfigError with one line."""
    path = Path(path)
    try:
        raw = read_yaml(path)
    except YamlError as error:
        raise ConfigError(str(error)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        return SearchSpec.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{path}: {describe(error)}") from None
