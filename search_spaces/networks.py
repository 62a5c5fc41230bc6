"""Distinct networks: what a configuration really trains, whatever fractions it was asked for.

Top-K keeps k = max(1, int(f * H * W)) of each channel's H x W positions, so a fraction is only a
parameterisation: at 32 px `layer2`'s map is 4 x 4 and every fraction below 1/8 keeps k = 1, and
at `layer4` (1 x 1) Top-K keeps the one position there is, which is no Top-K at all. Two
configurations whose placements keep the same k, with the same training knobs, are one network.
`Network` is that identity; the searcher trains each one once (`orchestrator.search.searcher`).

The search space's fractions are continuous, so a k counts as possible in a range when a stretch
of positive length gives it: a value reached only at the range's very end (layer3 at 32 px keeps
k = 2 only at exactly f = 0.5) is not something a sampler can be expected to find.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from search_spaces.params import Params
from trainables.models import Arch, Stem, feature_map_sizes
from trainables.topk import kept_per_channel

# Past this many, distinct networks are not enumerated: the space is large enough not to run out.
ENUMERATION_LIMIT = 100_000


@dataclass(frozen=True)
class FeatureMap:
    """One placement's output map for the searched architecture, stem and image size."""

    name: str
    height: int
    width: int

    @property
    def positions(self) -> int:
        return self.height * self.width

    def k(self, fraction: float) -> int:
        """Positions each channel keeps at this fraction (Top-K's own rule)."""
        return min(kept_per_channel(fraction, self.height, self.width), self.positions)

    def breakpoints(self, low: float, high: float) -> list[float]:
        """Fractions strictly inside (low, high) where k steps up."""
        return [j / self.positions for j in range(2, self.positions + 1) if low < j / self.positions < high]

    def possible_k(self, low: float, high: float) -> list[int]:
        """The k values a fraction in [low, high] gives on a stretch of positive length, in increasing order."""
        return sorted({self.k(f) for f in representatives([self], low, high)})

    def describe(self) -> str:
        """'layer3 (2x2)'."""
        return f"{self.name} ({self.height}x{self.width})"


def feature_maps(names: Sequence[str], image_size: int, stem: Stem, arch: Arch) -> dict[str, FeatureMap]:
    """Each named placement's output map for `arch` with `stem` on square inputs of `image_size` px."""
    sizes = feature_map_sizes(tuple(dict.fromkeys(names)), image_size, stem, arch)
    return {name: FeatureMap(name, *size) for name, size in sizes.items()}


def representatives(maps: Sequence[FeatureMap], low: float, high: float) -> list[float]:
    """One fraction inside each stretch of [low, high] over which no map's k changes, in order.

    Each is the midpoint of its stretch, so float rounding at a breakpoint never decides its k.
    """
    edges = sorted({low, high, *(b for m in maps for b in m.breakpoints(low, high))})
    return [(a + b) / 2 for a, b in itertools.pairwise(edges)]


@dataclass(frozen=True)
class Network:
    """A configuration's identity: k of the positions at each placement Top-K changes, and its knobs.

    A placement that keeps every position is left out (Top-K is the identity there), so the dense
    reference is the network with no sparse placement.
    """

    sparse: tuple[tuple[str, int, int], ...]  # (placement, k, positions), sorted by placement
    knobs: tuple[tuple[str, Any], ...] = ()

    def describe(self) -> str:
        """'layer1 4/64, layer2 1/16' (k of positions per placement), or 'dense'."""
        return ", ".join(f"{name} {k}/{positions}" for name, k, positions in self.sparse) or "dense"


def kept(topk: Mapping[str, float], maps: Mapping[str, FeatureMap]) -> list[tuple[str, int, int]]:
    """(placement, k, positions) at each placement of a model's `topk` {placement: fraction}, in its order."""
    return [(name, maps[name].k(fraction), maps[name].positions) for name, fraction in topk.items()]


def network(topk: Mapping[str, float], knobs: Mapping[str, Any], maps: Mapping[str, FeatureMap]) -> Network:
    """The network a model with this `topk` and these training knobs is."""
    sparse = sorted((name, k, positions) for name, k, positions in kept(topk, maps) if k < positions)
    return Network(tuple(sparse), tuple(sorted(knobs.items())))


def network_of(params: Params, maps: Mapping[str, FeatureMap]) -> Network:
    """The network a configuration trains."""
    return network(params.topk(), params.knobs(), maps)


def fixed_placements(maps: Sequence[FeatureMap], low: float, high: float) -> list[FeatureMap]:
    """The maps of a placement set whose k one fraction in [low, high] cannot change."""
    return [m for m in maps if len(m.possible_k(low, high)) == 1]


def networks_of_set(
    maps: Sequence[FeatureMap], low: float, high: float, per_placement: bool, grid: Sequence[float] | None = None
) -> set[tuple[tuple[str, int, int], ...]] | int:
    """The distinct sparse layouts one placement set yields: enumerated, or only counted when there are too many.

    A shared fraction steps through the stretches between every map's breakpoints (or the grid's
    points); per-placement fractions combine each map's possible k (or the k of the grid's points) freely.
    """
    layouts: Iterable[tuple[tuple[str, int, int], ...]]
    if per_placement:
        choices = [sorted({m.k(f) for f in grid}) if grid is not None else m.possible_k(low, high) for m in maps]
        if math.prod(len(c) for c in choices) > ENUMERATION_LIMIT:
            return math.prod(len(c) for c in choices)
        layouts = itertools.product(
            *([(m.name, k, m.positions) for k in c] for m, c in zip(maps, choices, strict=True))
        )
    else:
        fractions = list(grid) if grid is not None else representatives(maps, low, high)
        layouts = (tuple((m.name, m.k(f), m.positions) for m in maps) for f in fractions)
    return {tuple(sorted(entry for entry in layout if entry[1] < entry[2])) for layout in layouts}


def count_networks(
    sets: Sequence[Sequence[FeatureMap]],
    low: float,
    high: float,
    per_placement: bool,
    grid: Sequence[float] | None = None,
    knob_choices: int = 1,
) -> int:
    """How many distinct Top-K networks (the dense one excluded) the placement sets hold, times the knob choices."""
    layouts: set[tuple[tuple[str, int, int], ...]] = set()
    counted = 0
    for maps in sets:
        found = networks_of_set(maps, low, high, per_placement, grid)
        if isinstance(found, int):
            counted += found
        else:
            layouts |= found
    layouts.discard(())  # the dense network: the reference, run anyway
    return (len(layouts) + counted) * knob_choices
