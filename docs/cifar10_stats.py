"""The numbers docs/results-cifar10.md quotes: Welch tests of each Top-K configuration against the dense control.

    .venv/bin/python docs/cifar10_stats.py

No MLflow database is kept for that search, so the inputs are the doc's own tables, entered below as
constants (rounded to 3 decimals as printed there). One dense control (c000) is shared by four
comparisons (c001-c004); the raw p-values are Holm-adjusted over those four, which is valid under any
dependence between the tests (they are positively correlated through the shared control).

Welch-Satterthwaite df needs both sample sds. c001 and c003: from the front table. c002 and c004: the
doc gives only the difference's se, so their sd is backed out of se^2 = s_config^2/3 + s_dense^2/3.
The pooled column has no per-configuration sds at all, so it uses the conservative df = n - 1 = 2
(Welch's df always lies between n - 1 = 2 and 2n - 2 = 4 for 3 + 3 seeds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

SEEDS = 3
CONSERVATIVE_DF = SEEDS - 1

# The front table of docs/results-cifar10.md: +- as `run_search.py pareto` printed it, the population
# standard deviation (statistics.pstdev) over the 3 seeds: (accuracy, shape bias, held-out bias).
FRONT_PSTDEV: dict[str, tuple[float, float, float]] = {
    "c001": (0.024, 0.068, 0.034),
    "c003": (0.011, 0.089, 0.061),
    "c000": (0.029, 0.090, 0.088),
}

# The difference table of docs/results-cifar10.md: (difference of seed means against c000, its standard
# error from the 3 + 3 sample sds), for the held-out half and for both halves pooled per run.
HELD_OUT: dict[str, tuple[float, float]] = {
    "c001": (0.148, 0.067),
    "c002": (0.134, 0.064),
    "c003": (0.203, 0.076),
    "c004": (0.100, 0.064),
}
POOLED: dict[str, tuple[float, float]] = {
    "c001": (0.081, 0.063),
    "c002": (0.077, 0.066),
    "c003": (0.124, 0.081),
    "c004": (0.067, 0.071),
}


@dataclass(frozen=True)
class Comparison:
    name: str
    difference: float
    se: float
    df: float
    df_source: str

    @property
    def t(self) -> float:
        return self.difference / self.se

    @property
    def p(self) -> float:
        """Two-sided p-value of the Welch t statistic."""
        return float(2.0 * stats.t.sf(abs(self.t), self.df))


def sample_sd(pstdev: float, n: int = SEEDS) -> float:
    """The sample standard deviation (n - 1 denominator) from the population one (n denominator)."""
    return pstdev * math.sqrt(n / (n - 1))


def backed_out_sd(se: float, control_sd: float, n: int = SEEDS) -> float:
    """The configuration's sample sd from the difference's se and the control's sample sd."""
    variance = n * se**2 - control_sd**2
    if variance < 0:
        raise ValueError(f"se {se} is smaller than the control alone allows ({control_sd / math.sqrt(n):.4f})")
    return math.sqrt(variance)


def welch_df(sd1: float, sd2: float, n1: int = SEEDS, n2: int = SEEDS) -> float:
    """Welch-Satterthwaite degrees of freedom."""
    v1, v2 = sd1**2 / n1, sd2**2 / n2
    return (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))


def holm(pvalues: list[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the order given."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def held_out_comparisons() -> list[Comparison]:
    dense_sd = sample_sd(FRONT_PSTDEV["c000"][2])
    rows = []
    for name, (difference, se) in HELD_OUT.items():
        if name in FRONT_PSTDEV:
            sd = sample_sd(FRONT_PSTDEV[name][2])
            source = f"front table (s = {sd:.3f})"
        else:
            sd = backed_out_sd(se, dense_sd)
            source = f"backed out of se (s = {sd:.3f})"
        rows.append(Comparison(f"{name} - c000", difference, se, welch_df(sd, dense_sd), source))
    return rows


def conservative(rows: list[Comparison]) -> list[Comparison]:
    return [Comparison(r.name, r.difference, r.se, CONSERVATIVE_DF, "conservative n - 1") for r in rows]


def print_table(title: str, rows: list[Comparison]) -> None:
    adjusted = holm([r.p for r in rows])
    print(f"\n{title}")
    print(f"{'comparison':<12} {'diff':>6} {'se':>6} {'t':>5} {'df':>5} {'p':>6} {'Holm p':>7}  df from")
    for r, p_holm in zip(rows, adjusted, strict=True):
        numbers = f"{r.difference:+6.3f} {r.se:6.3f} {r.t:5.2f} {r.df:5.2f} {r.p:6.3f} {p_holm:7.3f}"
        print(f"{r.name:<12} {numbers}  {r.df_source}")


def backed_out_df_range(se: float) -> tuple[float, float]:
    """Welch df of a backed-out comparison over the rounding of se and of the dense pstdev (+-0.0005 each)."""
    dfs = []
    for se_value in (se - 0.0005, se + 0.0005):
        for pstdev in (FRONT_PSTDEV["c000"][2] - 0.0005, FRONT_PSTDEV["c000"][2] + 0.0005):
            dense_sd = sample_sd(pstdev)
            dfs.append(welch_df(backed_out_sd(se_value, dense_sd), dense_sd))
    return min(dfs), max(dfs)


def main() -> None:
    print(f"sample standard deviations over {SEEDS} seeds (pstdev x sqrt({SEEDS}/{SEEDS - 1})):")
    print(f"{'config':<7} {'accuracy':>9} {'shape bias':>11} {'held-out bias':>14}")
    for name, sds in FRONT_PSTDEV.items():
        accuracy, shape, held_out = (sample_sd(s) for s in sds)
        print(f"{name:<7} {accuracy:9.3f} {shape:11.3f} {held_out:14.3f}")
    rows = held_out_comparisons()
    print_table("held-out half, Welch df; Holm over the 4 comparisons:", rows)
    for name in ("c002", "c004"):
        low, high = backed_out_df_range(HELD_OUT[name][1])
        print(f"{name}: rounding (+-0.0005 on se and on the dense pstdev) moves its df over {low:.2f}-{high:.2f}")
    print_table("held-out half, df = 2 (conservative); Holm over the 4 comparisons:", conservative(rows))
    pooled = [Comparison(f"{n} - c000", d, se, CONSERVATIVE_DF, "conservative n - 1") for n, (d, se) in POOLED.items()]
    print_table("all stimuli pooled, df = 2 (conservative); Holm over the 4 comparisons:", pooled)


if __name__ == "__main__":
    main()
