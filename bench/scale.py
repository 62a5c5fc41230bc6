"""Thousands of trials through the real path, with training replaced by a sleep: what grows with the search.

Starts an MLflow tracking server over HTTP (gunicorn, its access log timing every request) on a
fresh PostgreSQL database, and a second database for Optuna; then runs a search of
`--configurations` x `--seeds` trials (default 1,000 x 2, 16 at once) in a driver process of its
own, through the real searcher, early-stopping scheduler, worker, tracker and checkpoints. Only
training is replaced: each epoch sleeps `--sleep` seconds and reports metrics drawn from the
configuration's fraction, with the per-image outcomes a real trial logs, so the front, its
bootstrap and `pareto` read what they read after a real search.

The driver is SIGKILLed, with the Ray it started (a lost head machine), once 90% of the trials
have ended, then resumed to the end. Measured in that one run, from outside the driver (/proc,
its progress lines, the server's log) and from inside (MEMORY lines, the workers' phases):

- wall time over the minimum (the trial-epochs trained x sleep / concurrency), both drivers together,
  without the restart (the kill until the resumed search's first trial ends, timed on its own) and with it;
- the driver's CPU per trial over the first tenth of trials and over 80-90%: the flatness figure;
- the driver's resident memory growth per trial (10% to 90%), and what Tune's trial objects and
  the searcher hold of it; the machine's CPU per trial, process by process;
- how long each trial held its slot, and where that went inside its worker;
- the server's requests per trial, their p50 / p99 latency, and Tune's last state save;
- how long `pareto` and the promotion's selection take on the finished search, and whether
  anything was lost (one FINISHED child run per trial, each configuration in the study complete
  with its seeds' means or stopped early);
- then, without Ray, each sampler's ask and an early-stopping decision in studies of 100 and
  10,000 configurations (`searcher_costs`).

    python bench/scale.py                      # 2,000 trials, about 12.5 minutes on 2 cores
    python bench/scale.py --configurations 50  # a quick look
    python bench/scale.py --searcher-only      # the samplers' costs alone, about 2 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = "postgresql://root@127.0.0.1:5432"
TICKS = os.sysconf("SC_CLK_TCK")
SIZES = (100, 10_000)  # configurations in the study when the searcher's costs are timed
SAMPLERS = ("random", "tpe", "nsga2", "gp")
# "trials 24 done, 3 running, 0 failed, 16 stopped early": every trial that has ended counts.
MEMORY = re.compile(r"MEMORY (\d+) Tune's trials (\d+) searcher (\d+)")
SAVES = re.compile(r"SAVES (\d+) (\d+) ([\d.]+)")
PROGRESS = re.compile(r"trials (\d+) done, \d+ running, (\d+) failed(?:, (\d+) stopped early)?")
TRAINED = re.compile(r"(\d+) of \d+ trial-epochs trained")


# --- the trial's stand-in -------------------------------------------------------------------------


def sleeping_trial(config: dict[str, Any], **kwargs: Any) -> None:
    """`search_trial` with `train_and_evaluate` replaced by `sleep_and_report` (set in each worker)."""
    import trainables.trial
    from orchestrator.search.worker import search_trial

    trainables.trial.train_and_evaluate = sleep_and_report  # type: ignore[assignment]
    PHASES.clear()
    PHASES["entered"] = time.monotonic()
    try:
        search_trial(config, **kwargs)
    finally:  # a stopped trial ends in SystemExit from its report
        record_phases()


def record_phases() -> None:
    """Where the trial's time went inside its worker: one JSON line per trial in $SCALE_PHASES."""
    if "trained" in PHASES:
        ended = time.monotonic()
        phases = {
            "start": PHASES["training"] - PHASES["entered"],
            "sleep": PHASES["slept"],
            "report": PHASES["trained"] - PHASES["training"] - PHASES["slept"],
            "finish": ended - PHASES["trained"],
        }
        with open(os.environ["SCALE_PHASES"], "a") as out:
            out.write(json.dumps(phases) + "\n")


PHASES: dict[str, float] = {}  # this worker's current trial: when each phase began, and the time slept


def sleep_and_report(trial: Any, report: Callable[..., None], resume: dict[str, Any] | None = None) -> dict:
    """Each epoch: sleep, then report metrics and per-image outcomes drawn from the configuration's fraction."""
    from trainables.checkpoint import RESUME_KEYS
    from trainables.per_image import PER_IMAGE, encode

    fraction = min(trial.model.topk.values(), default=1.0)
    rng = random.Random(f"{sorted(trial.model.topk.items())}-{trial.training.lr}-{trial.seed}")
    first = resume["epoch"] + 1 if resume else 1
    metrics: dict[str, float] = {}
    PHASES["training"], PHASES["slept"] = time.monotonic(), 0.0
    for epoch in range(first, trial.training.epochs + 1):
        sleep = float(os.environ.get("SCALE_SLEEP_S", "0.5"))
        time.sleep(sleep)
        PHASES["slept"] += sleep
        correct = [rng.random() < 0.3 + 0.3 * fraction for _ in range(60)]
        halves = {suffix: _codes(rng, 0.25 + 0.4 * (1 - fraction)) for suffix in ("", "_holdout")}
        metrics = {"epoch": epoch, "train_loss": 2.0 / epoch, "accuracy": sum(correct) / len(correct)}
        for suffix, codes in halves.items():
            metrics |= _stimuli_metrics(codes, suffix)
        metrics["images_per_s"] = 1000.0
        # A checkpoint as a restart reads it, with nothing trained to hold.
        state: dict[str, Any] = {**dict.fromkeys(RESUME_KEYS, {}), "epoch": epoch, "metrics": metrics, "tracking": {}}
        if epoch == trial.training.epochs:
            state["decision_files"] = {PER_IMAGE: encode(correct, halves)}
        PHASES["trained"] = time.monotonic()  # a trial stopped at this report never returns from it
        report(metrics, state)
        PHASES["trained"] = time.monotonic()
    return metrics


def _codes(rng: random.Random, shape: float) -> str:
    """48 conflict stimuli: shape, texture, another category, or not scored."""
    return "".join(
        "-" if rng.random() < 0.1 else "s" if (r := rng.random()) < shape else "t" if r < 0.85 else "o"
        for _ in range(48)
    )


def _stimuli_metrics(codes: str, suffix: str) -> dict[str, float]:
    scored, shape, texture = len(codes) - codes.count("-"), codes.count("s"), codes.count("t")
    return {
        f"shape_bias{suffix}": shape / max(1, shape + texture),
        f"shape_accuracy{suffix}": shape / scored,
        f"texture_accuracy{suffix}": texture / scored,
        f"cue_decision_rate{suffix}": (shape + texture) / scored,
    }


def drive(config: str, overrides: list[str], resume: bool) -> None:
    """The driver process: the search (or its resume) with the sleeping trial."""
    import logging

    from orchestrator.search.driver import run_search
    from search_spaces.spec import load_spec

    # Tune says at INFO how long its last save of the experiment state took ("... in 0.1234s").
    logging.getLogger("ray.tune.tune").setLevel(logging.INFO)
    profiler = None
    if os.environ.get("SCALE_PROFILE") and not resume:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    if os.environ.get("SCALE_TRACE_MEMORY") and not resume:
        import tracemalloc

        tracemalloc.start(int(os.environ["SCALE_TRACE_MEMORY"]))
    count_memory_at_each_tenth(profiler)
    run_search(load_spec(config, overrides), resume=resume, overrides=overrides, trial_function=sleeping_trial)


def count_memory_at_each_tenth(profiler: Any = None) -> None:
    """After each tenth of the trials has ended, print what the driver's main holders of state hold (MEMORY lines).

    With a `profiler` running (`--profile`), its statistics go to $SCALE_PROFILE-<tenth> at 10, 20, 70
    and 80%, before the kill, for `print_profile_growth`.
    With tracemalloc tracing (`--trace-memory`), what grew most from 20% to 80% is printed at 80%.
    """
    import gc
    import tracemalloc

    from ray.tune.execution.tune_controller import TuneController

    from orchestrator.search.progress import SearchProgress
    from orchestrator.search.searcher import ReplicateSearcher

    printed = set()
    traced: list[Any] = []
    original = SearchProgress.on_trial_complete
    saves: list[float] = []  # how long each of Tune's saves of the experiment state took
    save_to_dir = TuneController.save_to_dir

    def timed_save(controller: TuneController) -> None:
        start = time.process_time()
        save_to_dir(controller)
        saves.append(time.process_time() - start)

    TuneController.save_to_dir = timed_save  # type: ignore[method-assign]

    def on_trial_complete(self: SearchProgress, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        original(self, iteration, trials, trial, **info)
        ended = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        tenth = 10 * ended // (self.configurations * self.seeds)
        if tenth in printed:
            return
        printed.add(tenth)
        if profiler is not None and tenth in (1, 2, 7, 8):
            profiler.dump_stats(f"{os.environ['SCALE_PROFILE']}-{tenth}")
            Path(f"{os.environ['SCALE_PROFILE']}-{tenth}.ended").write_text(str(ended))
        if tracemalloc.is_tracing() and tenth in (2, 8):
            traced.append((ended, tracemalloc.take_snapshot()))
            if len(traced) == 2:
                (a, before), (b, after) = traced
                print_growth(after.compare_to(before, "traceback")[:15], b - a)
        searchers = [o for o in gc.get_objects() if isinstance(o, ReplicateSearcher)]
        if tenth == 5:  # what one trial object holds, attribute by attribute
            one = next(t for t in trials if t.status == "TERMINATED")
            held = sorted(((deep_size(v), k) for k, v in vars(one).items()), reverse=True)[:6]
            print("MEMORY-TRIAL " + ", ".join(f"{k} {size / 1024:.1f}" for size, k in held), flush=True)
        print(f"MEMORY {ended} Tune's trials {deep_size(trials)} searcher {deep_size(searchers)}", flush=True)
        print(f"SAVES {ended} {len(saves)} {sum(saves):.3f}", flush=True)

    SearchProgress.on_trial_complete = on_trial_complete  # type: ignore[method-assign]


def profile_growth(prefix: str, top: int = 15) -> list[str]:
    """The driver's functions whose own time per trial grew most from 10-20% to 70-80% of the trials (PROFILE lines)."""
    import pstats

    def own_time_per_trial(low: int, high: int) -> dict[Any, float]:
        before = pstats.Stats(f"{prefix}-{low}").stats  # type: ignore[attr-defined]
        after = pstats.Stats(f"{prefix}-{high}").stats  # type: ignore[attr-defined]
        trials = int(Path(f"{prefix}-{high}.ended").read_text()) - int(Path(f"{prefix}-{low}.ended").read_text())
        return {f: (after[f][2] - before.get(f, (0, 0, 0.0))[2]) / trials for f in after}

    early, late = own_time_per_trial(1, 2), own_time_per_trial(7, 8)
    grown = sorted(late, key=lambda f: late[f] - early.get(f, 0.0), reverse=True)[:top]
    total = f"10-20% {sum(early.values()) * 1000:.1f} ms, 70-80% {sum(late.values()) * 1000:.1f} ms"
    lines = [f"PROFILE driver CPU per trial, profiled: {total}"]
    for f in grown:
        where = f"{Path(f[0]).name}:{f[1]} {f[2]}"
        lines.append(f"PROFILE {early.get(f, 0.0) * 1000:7.2f} -> {late[f] * 1000:7.2f} ms  {where}")
    return lines


def print_growth(grown: list[Any], trials: int) -> None:
    """The allocations that grew most, per trial, each with the innermost frames of its traceback (MEMORY-GREW)."""
    for stat in grown:
        frames = " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(stat.traceback))
        print(f"MEMORY-GREW {stat.size_diff / trials / 1024:.2f} KB per trial: {frames}", flush=True)


def deep_size(root: object) -> int:
    """Bytes of `root` and every object it reaches, short of classes, modules and functions (shared by all)."""
    import gc
    import types

    shared = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    seen, stack, total = set(), [root], 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, shared):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


# --- the searcher alone, replayed --------------------------------------------------------------


def searcher_costs(
    sizes: tuple[int, ...], samplers: tuple[str, ...], asks: int = 5, limit_s: float = 20.0
) -> list[str]:
    """Each sampler's ask, and an early-stopping decision, timed in a study of each size: the report's lines.

    A study of `size` configurations is what a random search replayed against the recorded table
    leaves (bench/replay.py: the real searcher, the table's metrics); each sampler then proposes
    `asks` more through the real `ReplicateSearcher`, each told its table result before the next.
    A sampler whose ask takes over `limit_s` at one size is not timed at larger ones.
    """
    import optuna

    sys.path.insert(0, str(ROOT / "bench"))
    from replay import load_table, replay, replay_spec

    from orchestrator import names
    from orchestrator.search.early_stopping import RungLadder
    from orchestrator.search.searcher import ReplicateSearcher, make_study
    from search_spaces.params import Params

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    table = load_table()
    lr = "search.lr={low: 0.001, high: 0.1, log: true}"  # every proposal a distinct network
    studies = {}
    for size in sizes:  # the studies to start from, each a random search's of that many configurations
        spec = replay_spec(table, "random", size + 1, 0, [lr])
        study = make_study(spec, "prefill", storage=optuna.storages.InMemoryStorage())
        replay(table, spec, concurrency=8, study=study)
        studies[size] = study.get_trials(deepcopy=False)
    lines, too_slow = [], set()
    for sampler in samplers:
        costs = []
        for size in sizes:
            if sampler in too_slow:
                costs.append(f"at {size}: not timed")
                continue
            spec = replay_spec(table, sampler, size + asks + 2, 0, [lr])
            study = make_study(spec, f"{sampler}-{size}", storage=optuna.storages.InMemoryStorage())
            study.add_trials(studies[size])
            searcher = ReplicateSearcher.for_spec(spec, study)
            for seed in spec.seeds:  # the dense reference's seeds: no ask
                searcher.suggest(f"dense-{seed}")
            seconds = []
            for n in range(asks):
                start = time.perf_counter()
                try:
                    with time_limit(limit_s):
                        config = searcher.suggest(f"t{n}-{spec.seeds[0]}")  # a new configuration: the sampler's ask
                except TimeoutError:
                    seconds.append(math.inf)
                    break
                seconds.append(time.perf_counter() - start)
                assert isinstance(config, dict)
                for seed in spec.seeds[1:]:  # its other seeds
                    searcher.suggest(f"t{n}-{seed}")
                params = Params.from_dict(config[names.PARAMS])
                for seed in spec.seeds:
                    searcher.on_trial_complete(f"t{n}-{seed}", table.lookup(params, seed)[-1])
            if math.isinf(seconds[-1]):
                too_slow.add(sampler)
                costs.append(f"at {size}: over {limit_s:.0f} s")
            else:
                costs.append(f"at {size}: {statistics.median(seconds) * 1000:.1f} ms")
        lines.append(f"{sampler} ask, in a study of n configurations: " + ", ".join(costs))
    for size in sizes:  # the decision at a rung every configuration reached
        ladder = RungLadder(rungs=(1,), reduction_factor=3)
        rng = random.Random(0)
        ladder.values[1] = {f"c{i}": {0: (rng.random(), rng.random())} for i in range(size)}
        start = time.perf_counter()
        for n in range(asks):
            ladder.observe(f"new{n}", 0, 1, (rng.random(), rng.random()))
        lines.append(
            f"early-stopping decision at a rung of {size}: {(time.perf_counter() - start) / asks * 1000:.1f} ms"
        )
    return lines


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the block once `seconds` have passed (SIGALRM: the main thread only)."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- the services ---------------------------------------------------------------------------------


def create_database(name: str) -> str:
    """A fresh PostgreSQL database; its URL."""
    from sqlalchemy import create_engine, text

    engine = create_engine(f"{POSTGRES}/test", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return f"{POSTGRES}/{name}"


def drop_database(name: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(f"{POSTGRES}/test", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def start_server(backend: str, workdir: Path) -> tuple[subprocess.Popen, str, Path]:
    """`mlflow server` under gunicorn on loopback, its access log giving each request's microseconds."""
    sys.path.insert(0, str(ROOT / "bench"))
    from scaling import answers, free_port, wait_until

    port, log, access = free_port(), workdir / "mlflow-server.log", workdir / "access.log"
    options = f"--access-logfile {access} --access-logformat '%(m)s %(U)s %(s)s %(D)s' --timeout 120"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", backend, "--serve-artifacts", "--artifacts-destination", str(workdir / "art")]
    command += ["--workers", "2", "--gunicorn-opts", options]
    server = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{uri}/health"), server, log)
    return server, uri, access


# --- measuring the driver from outside ------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_kb(pid: int) -> int:
    """Resident memory of a process now, in KB."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1])


# A CPU census: trials ended, the machine's busy CPU seconds, and each live process's (kind, CPU seconds).
Census = tuple[int, float, dict[int, tuple[str, float]]]


def machine_cpu(driver: int, trials: int) -> Census:
    """CPU seconds so far of the whole machine and of every live process, with what each is."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split()[1:9]]
    busy = (sum(fields) - fields[3]) / TICKS  # all but idle time
    processes = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            used = cpu_s(int(entry.name))
        except OSError:
            continue  # ended meanwhile
        kind = (
            "driver"
            if int(entry.name) == driver
            else "trial workers"
            if command.startswith("ray::")
            else "MLflow server"
            if "gunicorn" in command or "mlflow" in command
            else "PostgreSQL"
            if command.startswith("postgres")
            else "Ray's services"
            if "/ray/" in command
            else "other"
        )
        processes[int(entry.name)] = (kind, used)
    return trials, busy, processes


Sample = tuple[float, int, float, int]  # time, trials ended, the driver's CPU s, its RSS KB


def watch(
    driver: subprocess.Popen, log: Path, stop_at: int | None, census_at: tuple[int, ...] = ()
) -> tuple[list[Sample], dict[int, Census]]:
    """Follow the driver's progress lines, sampling it at each; kill it at `stop_at`; a CPU census at `census_at`."""
    samples, census = [], {}
    with log.open("w") as out:
        assert driver.stdout is not None
        for line in driver.stdout:
            out.write(line)
            found = PROGRESS.search(line)
            if not found or driver.poll() is not None:
                continue
            done = sum(int(n) for n in found.groups(default="0"))
            try:
                samples.append((time.monotonic(), done, cpu_s(driver.pid), rss_kb(driver.pid)))
            except (OSError, StopIteration):
                continue
            for at in census_at:
                if done >= at and at not in census:
                    census[at] = machine_cpu(driver.pid, done)
            if stop_at is not None and done >= stop_at:
                os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started: a lost head machine
                break
    driver.wait()
    return samples, census


def cpu_census(census: dict[int, Census], low: int, high: int) -> str:
    """Where the machine's CPU went per trial between two censuses, busiest first."""
    if low not in census or high not in census:
        return "CPU census: not taken (the search ended before 90%)"
    (trials_a, busy_a, before), (trials_b, busy_b, after) = census[low], census[high]
    count = trials_b - trials_a
    # By process, each counted as what it is at the second census: a Ray worker is renamed
    # `ray::...` only once it runs a task, and one started in between counts from zero.
    spent: dict[str, float] = {}
    for pid, (kind, used) in after.items():
        spent[kind] = spent.get(kind, 0.0) + (used - before.get(pid, (kind, 0.0))[1]) / count
    parts = ", ".join(f"{k} {v * 1000:.0f}" for k, v in sorted(spent.items(), key=lambda kv: -kv[1]))
    return f"CPU per trial (10% to 90%, ms): machine {(busy_b - busy_a) / count * 1000:.0f} = {parts}"


def slot_time(samples: list[Sample], low: int, high: int, concurrency: int, phases: Path) -> str:
    """How long each trial held its slot (10% to 90%), and where the time went inside its worker."""
    held = per_trial(samples, low, high, 0) * concurrency
    rows = [json.loads(line) for line in phases.read_text().splitlines()] if phases.is_file() else []
    if not rows:
        return f"slot time per trial: {held:.2f} s"
    mean = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
    inside = ", ".join(f"{k} {v:.2f}" for k, v in mean.items())
    return f"slot time per trial: {held:.2f} s; in its worker (s, mean of {len(rows)}): {inside}; the rest is Tune's"


def state_saves(log: str, trials: int) -> str:
    """How often Tune saved its experiment state, and the CPU that took per trial: first tenth, 80-90% (SAVES)."""
    found = {10 * int(e) // trials: (int(e), int(n), float(s)) for e, n, s in SAVES.findall(log)}
    last = max(found, default=0)  # the 90% line may lose its race with the kill: then 70-80%
    if not {0, 1, last - 1} <= set(found) or last < 8:
        return "Tune's state saves: not counted"

    def between(low: int, high: int) -> str:
        (e0, n0, s0), (e1, n1, s1) = found[low], found[high]
        return f"{n1 - n0} saves, {(s1 - s0) / max(1, e1 - e0) * 1000:.1f} ms per trial"

    return (
        f"Tune's state saves (driver CPU): first tenth {between(0, 1)}; "
        f"{(last - 1) * 10}-{last * 10}% {between(last - 1, last)}"
    )


def held_per_trial(log: str) -> str:
    """Growth per trial of what Tune's trial objects and the searcher hold, between the first and last MEMORY lines."""
    found = [tuple(map(int, m)) for m in MEMORY.findall(log)]
    if len(found) < 2:
        return "held: not counted"
    (a, tune_a, searcher_a), (b, tune_b, searcher_b) = found[0], found[-1]
    return (
        f"of which held (deep sizes, {a} to {b} trials): Tune's trial objects {(tune_b - tune_a) / (b - a) / 1024:.1f} "
        f"KB per trial, the searcher (the Optuna study's cache within) {(searcher_b - searcher_a) / (b - a) / 1024:.1f}"
    )


def per_trial(samples: list[Sample], low: int, high: int, field: int) -> float:
    """The change of sample `field` per trial done between `low` and `high` trials done."""
    start = next(s for s in samples if s[1] >= low)
    end = next(s for s in reversed(samples) if s[1] <= high)
    return (end[field] - start[field]) / max(1, end[1] - start[1])


def server_requests(access: Path) -> list[tuple[str, float]]:
    """(path, latency ms) of every request the server logged."""
    found = []
    for line in access.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3].isdigit():
            found.append((parts[1], int(parts[3]) / 1000))
    return found


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Seconds a run_search.py command takes (it must succeed)."""
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(ROOT / "run_search.py"), *command], cwd=cwd, env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"{command[0]} failed: {out.stderr[-2000:]}")
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--configurations", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--sleep", type=float, default=2.5, help="seconds each epoch sleeps")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--profile", action="store_true", help="profile the driver and print what grew most from 10-20%% to 70-80%%"
    )
    parser.add_argument(
        "--trace-memory",
        type=int,
        default=0,
        metavar="FRAMES",
        help="trace the driver's allocations (FRAMES deep) and print what grew most from 20%% to 80%%",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the databases and the workdir (and print where) to look into"
    )
    parser.add_argument("--searcher-only", action="store_true", help="only the searcher's costs, replayed without Ray")
    parser.add_argument("--drive", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # the driver process
    args = parser.parse_args()
    if args.drive:
        resume, config, *overrides = args.drive
        drive(config, overrides, resume == "resume")
        return
    if args.searcher_only:
        for line in searcher_costs(SIZES, SAMPLERS):
            print(line, flush=True)
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    names = {"mlflow": f"scale_mlflow_{tag}", "optuna": f"scale_optuna_{tag}"}
    trials = args.configurations * args.seeds
    overrides = [
        f"configurations={args.configurations}",
        f"seeds={list(range(args.seeds))}",
        f"training.epochs={args.epochs}",
        "training.checkpoint_every=1",
        # A continuous lr makes every proposal a distinct network: the fraction alone gives 100.
        "search.lr={low: 0.001, high: 0.1, log: true}",
        "early_stopping={rungs: [1]}" if args.epochs > 1 else "early_stopping=null",
        f"concurrency={args.concurrency}",
        f"resources={{cpu: {2 / args.concurrency:g}, gpu: 0}}",
        "confirm=null",
        f"storage_path={workdir / 'ray_results'}",
    ]
    server = None
    try:
        backend = create_database(names["mlflow"])
        overrides.append(f"optuna_storage={create_database(names['optuna'])}")
        server, uri, access = start_server(backend, workdir)
        overrides.append(f"tracking_uri={uri}")
        env = {**os.environ, "SCALE_SLEEP_S": str(args.sleep), "PYTHONUNBUFFERED": "1"}
        env["SCALE_PHASES"] = str(workdir / "phases.jsonl")
        if args.trace_memory:
            env["SCALE_TRACE_MEMORY"] = str(args.trace_memory)
        if args.profile:
            env["SCALE_PROFILE"] = str(workdir / "driver.prof")
        config = str(ROOT / "search_spaces" / "quickstart.yaml")
        report = measure(args, workdir, config, overrides, env, access, trials)
        if args.profile:
            report[-2:-2] = profile_growth(env["SCALE_PROFILE"])
        for line in report[:-2]:
            print(line, flush=True)
        # The searcher alone after the search, so that neither disturbs the other's timings.
        for line in searcher_costs(SIZES, SAMPLERS):
            print(line, flush=True)
        for line in report[-2:]:
            print(line, flush=True)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        for name in names.values():
            if args.keep:
                print(f"kept database: {POSTGRES}/{name}")
            else:
                drop_database(name)
        # A temp workdir (every trial's checkpoints, MLflow's artifacts, the logs) goes with the databases.
        if args.keep or args.workdir:
            print(f"workdir: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def measure(
    args: argparse.Namespace,
    workdir: Path,
    config: str,
    overrides: list[str],
    env: dict[str, str],
    access: Path,
    trials: int,
) -> list[str]:
    """Run, kill at 90%, resume; then time the read side and check nothing was lost. The report's lines."""

    def driver(mode: str) -> subprocess.Popen:
        command = [sys.executable, __file__, "--drive", mode, config, *overrides]
        return subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    start = time.monotonic()
    tenth = trials // 10
    first, census = watch(driver("search"), workdir / "driver.log", int(trials * 0.9), (tenth, 9 * tenth - 1))
    resumed_at = time.monotonic()
    second, _ = watch(driver("resume"), workdir / "resume.log", stop_at=None)
    wall = time.monotonic() - start
    resume_s = time.monotonic() - resumed_at
    first_cpu = per_trial(first, 0, tenth, 2)
    last_cpu = per_trial(first, 8 * tenth, 9 * tenth, 2)
    memory = per_trial(first, tenth, 9 * tenth, 3)
    requests = server_requests(access)
    latencies = sorted(ms for _, ms in requests)
    lines = [
        f"trials: {trials} ({args.configurations} configurations x {args.seeds} seeds, {args.epochs} epochs "
        f"of {args.sleep:g} s, {args.concurrency} at once)",
        "wall: (below)",
        f"driver CPU per trial: first tenth {first_cpu * 1000:.1f} ms, 80-90% {last_cpu * 1000:.1f} ms",
        f"driver memory growth: {memory:.1f} KB per trial (10% to 90%)",
        cpu_census(census, tenth, 9 * tenth - 1),
        slot_time(first, tenth, 9 * tenth, args.concurrency, workdir / "phases.jsonl"),
        held_per_trial(driver_log := (workdir / "driver.log").read_text()),
        state_saves(driver_log, trials),
        *(line for line in driver_log.splitlines() if line.startswith(("MEMORY-TRIAL", "MEMORY-GREW"))),
        f"MLflow server: {len(requests) / trials:.1f} requests per trial, p50 {statistics.median(latencies):.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)]:.1f} ms",
    ]
    saves = re.findall(r"experiment state to '.*' in ([\d.]+)s", (workdir / "resume.log").read_text())
    lines.append(f"Tune's last save of the experiment state: {float(saves[-1]) if saves else float('nan'):.2f} s")
    read, trained = read_side(workdir, overrides, env, trials)
    # The minimum counts the epochs the finished search trained (early stopping cut some), not the
    # ones a killed trial redid after the resume: those are part of what the kill costs.
    minimum = trained * args.sleep / args.concurrency
    # The restart: from the kill until the resumed search ends its first trial (a new Ray, Tune
    # restoring its state, 16 workers importing torch again, the killed trials' epochs redone). It
    # is what the kill costs, timed on its own; the search's throughput is the wall without it.
    restored = second[0][1] if second else 0
    restart = next((s[0] for s in second if s[1] > restored), resumed_at) - resumed_at
    first_line = second[0][0] - resumed_at if second else float("nan")
    lines[1] = (
        f"wall: {wall:.0f} s (minimum {minimum:.0f} s: {trained} trial-epochs x {args.sleep:g} s / "
        f"{args.concurrency}); over the minimum {wall / minimum:.2f} with the restart, "
        f"{(wall - restart) / minimum:.2f} without; resume from a driver killed at 90%: {resume_s:.0f} s to the "
        f"end, first progress line after {first_line:.0f} s, first trial ended after {restart:.0f} s"
    )
    lines += [
        *read,
        f"scale_wall_over_minimum: {(wall - restart) / minimum:.2f}",
        f"scale_last_over_first_event_cpu: {last_cpu / first_cpu:.2f}",
    ]
    return lines


def read_side(workdir: Path, overrides: list[str], env: dict[str, str], trials: int) -> tuple[list[str], int]:
    """`pareto` and the promotion's selection timed on the finished search, what was lost; and the epochs trained."""
    import optuna
    from mlflow.tracking import MlflowClient

    from orchestrator import names
    from orchestrator.promotion import choice
    from orchestrator.tracking import child_runs, collect, find_search

    setting = dict(o.split("=", 1) for o in overrides)
    client = MlflowClient(setting["tracking_uri"])
    search = find_search(client, "sparse-shape-search-quickstart", status="FINISHED")
    common = ["--tracking-uri", setting["tracking_uri"], "--experiment", "sparse-shape-search-quickstart"]
    pareto_s = timed(["pareto", *common, "--search", search.search_id], workdir, env)
    # The search's own closing report counts the trial-epochs it trained.
    trained = TRAINED.search((workdir / "resume.log").read_text())
    start = time.monotonic()
    choice.by_rule(collect(client, search), "shape_bias", [], search.floors)
    selection_s = time.monotonic() - start
    runs = child_runs(client, search.experiment_id, search.run_id)
    finished = sum(r.info.status == "FINISHED" for r in runs)
    study = optuna.load_study(study_name=search.search_id, storage=setting["optuna_storage"])
    # Every configuration ends as one Optuna trial: complete with every seed's mean, or failed by
    # early stopping (partial scores are not results); anything else was lost.
    ended: dict[str, str] = {}
    for t in study.trials:
        seeds = t.user_attrs.get(names.SEEDS)
        if t.state == optuna.trial.TrialState.COMPLETE and seeds == len(search.seeds):
            ended.setdefault(str(t.user_attrs.get(names.CONFIGURATION)), "complete")
        elif names.STOPPED_AT_EPOCH in t.user_attrs:
            ended.setdefault(str(t.user_attrs.get(names.CONFIGURATION)), "stopped early")
    complete = sum(v == "complete" for v in ended.values())
    proposed = {str(t.user_attrs.get(names.CONFIGURATION)) for t in study.trials}
    lines = [
        f"pareto: {pareto_s:.1f} s; promote's selection: {selection_s:.1f} s",
        f"child runs: {len(runs)} ({finished} FINISHED) of {trials} trials; Optuna: {complete} configurations "
        f"complete with {len(search.seeds)} seeds' means, {len(ended) - complete} stopped early, "
        f"{len(proposed - set(ended))} lost, of the {len(proposed)} it proposed (the dense reference is not one)"
        + (f"; lost: {', '.join(sorted(lost))}" if (lost := proposed - set(ended)) else ""),
    ]
    return lines, int(trained.group(1)) if trained else trials * int(setting["training.epochs"])


if __name__ == "__main__":
    main()
