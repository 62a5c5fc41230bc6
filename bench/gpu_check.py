"""Top-K cost on a GPU at the authors' setting, measured side by side in one run (one short script).

Measures, all with interleaved timed repeats (contenders alternate round by round, medians, a
device synchronize around every timed call, so noise hits both sides):
1. sparse / dense ResNet-18 training step, cifar stem, 224 px, batch 32, Top-K 20% after layer2,
   10 classes, SGD: in fp32 and under bf16 autocast, contiguous and channels_last; plus each
   step's peak memory above what is resident (target: time ratio <= 1.05);
2. our Top-K against the authors' topk + scatter_ float-mask version, forward+backward on a
   32 x 128 x 112 x 112 activation, fp32 and bf16: time, peak memory and bytes autograd keeps
   for backward (targets: ours faster; ours <= 1/4 of their mask memory);
3. torch.compile of the sparse model (the trainer's GPU setting: channels_last, bf16): compile
   time and steady-state step time against eager;
then one summary block of key: value lines to record.

Run (GPU, defaults are the authors' setting; well under 5 minutes on an H200):
    python bench/gpu_check.py
CPU smoke run of the same code paths (a couple of minutes on 2 cores; the step's bf16 autocast
rows are skipped on CPU, and peak memory reads n/a there):
    python bench/gpu_check.py --device cpu --size 64 --batch 4 --repeats 2 --no-compile
Exit code 2 if --device cuda (the default) and no CUDA device is visible.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run as `python bench/gpu_check.py` on a lent machine where the project may not be installed:
# the repository root must be importable for `trainables`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# The authors' reference implementation, shared with the CPU benchmark beside this file.
from topk import authors_sparse_hw, saved_bytes  # noqa: E402

from trainables.models import build_model  # noqa: E402
from trainables.topk import topk_sparsify  # noqa: E402

FRACTION = 0.2
TOPK = {"layer2": FRACTION}
NUM_CLASSES = 10
MiB = 2**20


def emit(line: str) -> None:
    """Print at once, so a run killed by its time limit still shows what it measured."""
    print(line, flush=True)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work; CUDA calls return before the kernels finish."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    contenders: dict[str, Callable[[], None]], repeats: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Median seconds per call of each contender, calls alternating round by round."""
    for _ in range(warmup):
        for run in contenders.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_bytes(run: Callable[[], None], device: torch.device) -> int | None:
    """Peak bytes allocated during one call above what was allocated before it; None off CUDA."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def training_step(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, amp_dtype: torch.dtype | None
) -> Callable[[], None]:
    """One SGD step of `model` on (x, y), under autocast when amp_dtype is given."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    return step


def mib(n: int | None) -> str:
    """Bytes as MiB, or n/a where the device does not count them."""
    return "n/a" if n is None else f"{n / MiB:.1f} MiB"


def ratio(a: float | int | None, b: float | int | None) -> str:
    """a / b to three places, or n/a."""
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.3f}"


def step_section(args: argparse.Namespace, device: torch.device, summary: dict[str, str]) -> None:
    """Sparse vs dense training step per precision and memory format: time and peak memory."""
    emit(
        f"\n== training step: cifar stem, {args.size} px, batch {args.batch}, Top-K {FRACTION:.0%} after layer2, SGD =="
    )
    torch.manual_seed(0)
    dense_cpu = build_model(num_classes=NUM_CLASSES, stem="cifar")
    sparse_cpu = build_model(num_classes=NUM_CLASSES, stem="cifar", topk=TOPK)
    sparse_cpu.load_state_dict(dense_cpu.state_dict())
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    precisions: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
    if device.type != "cuda":
        # CPU bf16 autocast is ~8x slower than fp32 without AMX, and training never uses it on CPU.
        del precisions["bf16"]
        emit("bf16 autocast: skipped on CPU (training runs fp32 there)")
    ratios = []
    for precision, amp_dtype in precisions.items():
        for format_name, memory_format in formats.items():
            # Fresh copies per setting: no optimizer state or cached layouts carry across settings.
            dense = copy.deepcopy(dense_cpu).to(device).to(memory_format=memory_format)
            sparse = copy.deepcopy(sparse_cpu).to(device).to(memory_format=memory_format)
            x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=memory_format)
            y = torch.randint(0, NUM_CLASSES, (args.batch,), device=device)
            steps = {"dense": training_step(dense, x, y, amp_dtype), "sparse": training_step(sparse, x, y, amp_dtype)}
            medians = interleaved_medians(steps, args.repeats, args.warmup, device)
            peaks = {name: peak_bytes(step, device) for name, step in steps.items()}
            key = f"{precision}_{format_name}"
            r = medians["sparse"] / medians["dense"]
            ratios.append(r)
            emit(
                f"{precision:4s} {format_name:13s}: dense {medians['dense'] * 1e3:7.1f} ms  "
                f"sparse {medians['sparse'] * 1e3:7.1f} ms"
                f"  ratio {r:.3f}  | step peak dense {mib(peaks['dense'])}  sparse {mib(peaks['sparse'])}"
                f"  ratio {ratio(peaks['sparse'], peaks['dense'])}"
            )
            summary[f"step_ms_dense_{key}"] = f"{medians['dense'] * 1e3:.1f}"
            summary[f"step_ms_sparse_{key}"] = f"{medians['sparse'] * 1e3:.1f}"
            summary[f"step_ratio_{key}"] = f"{r:.3f}"
            summary[f"step_peak_mib_dense_{key}"] = mib(peaks["dense"]).removesuffix(" MiB")
            summary[f"step_peak_mib_sparse_{key}"] = mib(peaks["sparse"]).removesuffix(" MiB")
            summary[f"step_peak_ratio_{key}"] = ratio(peaks["sparse"], peaks["dense"])
            del dense, sparse, steps, x, y
            if device.type == "cuda":
                torch.cuda.empty_cache()
    summary["step_ratio_worst"] = f"{max(ratios):.3f} (target <= 1.05)"


def kernel_section(args: argparse.Namespace, device: torch.device, summary: dict[str, str]) -> None:
    """Our Top-K vs the authors' on the layer2 activation: fwd+bwd time, peak and saved memory."""
    side = args.size // 2  # layer2 halves the cifar stem's resolution
    shape = (args.batch, 128, side, side)
    emit(f"\n== Top-K {FRACTION:.0%} forward+backward on {shape}: ours vs authors (topk + scatter_ float mask) ==")
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        torch.manual_seed(0)
        x = torch.randn(shape, device=device, dtype=dtype)
        grad = torch.randn_like(x)

        def forward_backward(
            fn: Callable[[torch.Tensor, float], torch.Tensor], x: torch.Tensor, grad: torch.Tensor
        ) -> Callable[[], None]:
            """One forward and backward of fn on a fresh leaf of x."""

            def step() -> None:
                leaf = x.detach().requires_grad_(True)
                fn(leaf, FRACTION).backward(grad)

            return step

        contenders = {
            "ours": forward_backward(topk_sparsify, x, grad),
            "authors": forward_backward(authors_sparse_hw, x, grad),
        }
        medians = interleaved_medians(contenders, args.repeats, args.warmup, device)
        peaks = {who: peak_bytes(run, device) for who, run in contenders.items()}
        ours_saved = saved_bytes(lambda t: topk_sparsify(t, FRACTION), x)
        theirs_saved = saved_bytes(lambda t: authors_sparse_hw(t, FRACTION), x)
        t_ratio = medians["ours"] / medians["authors"]
        emit(
            f"{name}: time ours {medians['ours'] * 1e3:.2f} ms  authors {medians['authors'] * 1e3:.2f} ms  "
            f"ratio {t_ratio:.3f}  | peak ours {mib(peaks['ours'])}  authors {mib(peaks['authors'])}  "
            f"ratio {ratio(peaks['ours'], peaks['authors'])}"
            f"  | kept for backward ours {mib(ours_saved)}  authors {mib(theirs_saved)}"
            f"  ratio {ratio(ours_saved, theirs_saved)}"
        )
        if dtype == torch.float32:
            # bf16 has many |x| ties, where either side may keep a different tied element.
            same = torch.equal(topk_sparsify(x, FRACTION), authors_sparse_hw(x, FRACTION))
            emit(f"fp32 outputs identical: {same}")
            summary["topk_outputs_identical_fp32"] = str(same)
        summary[f"topk_ms_ours_{name}"] = f"{medians['ours'] * 1e3:.2f}"
        summary[f"topk_ms_authors_{name}"] = f"{medians['authors'] * 1e3:.2f}"
        summary[f"topk_time_ratio_{name}"] = f"{t_ratio:.3f} (target < 1)"
        summary[f"topk_peak_ratio_{name}"] = ratio(peaks["ours"], peaks["authors"])
        # The quarter target is against the authors' fp32 mask; a bool mask is half a bf16 one at best.
        target = " (target <= 0.25)" if dtype == torch.float32 else ""
        summary[f"topk_saved_ratio_{name}"] = f"{ratio(ours_saved, theirs_saved)}{target}"
        del x, grad, contenders
        if device.type == "cuda":
            torch.cuda.empty_cache()


def compile_section(args: argparse.Namespace, device: torch.device, summary: dict[str, str]) -> None:
    """torch.compile of the sparse model: compile time, then steady-state step time vs eager."""
    # The trainer's GPU setting (channels_last, bf16 autocast); on CPU it trains contiguous fp32.
    on_gpu = device.type == "cuda"
    memory_format = torch.channels_last if on_gpu else torch.contiguous_format
    amp_dtype = torch.bfloat16 if on_gpu else None
    setting = "channels_last bf16" if on_gpu else "contiguous fp32"
    emit(f"\n== torch.compile of the sparse model ({setting}) ==")
    if args.no_compile:
        emit("skipped (--no-compile)")
        summary["compile"] = "skipped"
        return
    try:
        from torch._dynamo.utils import counters

        torch.manual_seed(0)
        eager = build_model(num_classes=NUM_CLASSES, stem="cifar", topk=TOPK).to(device).to(memory_format=memory_format)
        twin = copy.deepcopy(eager)
        compiled: Any = torch.compile(twin)
        x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=memory_format)
        y = torch.randint(0, NUM_CLASSES, (args.batch,), device=device)
        steps = {"eager": training_step(eager, x, y, amp_dtype), "compiled": training_step(compiled, x, y, amp_dtype)}
        counters.clear()
        synchronize(device)
        start = time.perf_counter()
        # Compilation is lazy: the first step traces and compiles forward and backward.
        steps["compiled"]()
        synchronize(device)
        compile_s = time.perf_counter() - start
        breaks = sum(counters["graph_break"].values())
        medians = interleaved_medians(steps, args.repeats, args.warmup, device)
        r = medians["compiled"] / medians["eager"]
        emit(
            f"first compiled step (compile) {compile_s:.1f} s  graph breaks {breaks}  | steady step eager"
            f" {medians['eager'] * 1e3:.1f} ms  compiled {medians['compiled'] * 1e3:.1f} ms  ratio {r:.3f}"
        )
        summary["compile_s"] = f"{compile_s:.1f}"
        summary["compile_graph_breaks"] = str(breaks)
        summary["compile_step_ms_eager"] = f"{medians['eager'] * 1e3:.1f}"
        summary["compile_step_ms_compiled"] = f"{medians['compiled'] * 1e3:.1f}"
        summary["compile_step_ratio"] = f"{r:.3f}"
    except Exception as error:  # a compile failure is a finding to record, not a reason to stop
        message = " ".join(str(error).split())[:300]
        emit(f"compile FAILED: {type(error).__name__}: {message}")
        summary["compile"] = f"FAILED {type(error).__name__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--size", type=int, default=224, help="input px (the authors: 224)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (the authors: 32)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds per contender")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds per contender first")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile section")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: --device cuda but no CUDA device is visible (use --device cpu for a smoke run)", file=sys.stderr
        )
        sys.exit(2)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    began = time.perf_counter()

    summary: dict[str, str] = {}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({args.threads} threads)"
    cuda = torch.version.cuda or "none"
    cudnn = str(torch.backends.cudnn.version()) if device.type == "cuda" else "n/a"
    emit(f"device {name} | torch {torch.__version__} | CUDA {cuda} | cuDNN {cudnn}")
    # Recorded because they change fp32 conv speed; left at torch's defaults, as training does.
    emit(
        f"cudnn.benchmark {torch.backends.cudnn.benchmark}  cudnn.allow_tf32 {torch.backends.cudnn.allow_tf32}"
        f"  matmul.allow_tf32 {torch.backends.cuda.matmul.allow_tf32}"
        f" | size {args.size} batch {args.batch} warmup {args.warmup} repeats {args.repeats}, medians"
    )
    summary.update(device=name, torch=torch.__version__, cuda=cuda)

    step_section(args, device, summary)
    kernel_section(args, device, summary)
    compile_section(args, device, summary)

    summary["total_s"] = f"{time.perf_counter() - began:.1f}"
    emit("\n== summary ==")
    for key, value in summary.items():
        emit(f"{key}: {value}")


if __name__ == "__main__":
    main()
