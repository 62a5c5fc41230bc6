"""Where and how a trial computes: the device, mixed precision, CPU threads, and RNG state.

Results depend on all of them (the thread count changes reduction order), so the checkpoint
records the RNG state and the thread count a trial really used.
"""

from __future__ import annotations

import random
from typing import Any, cast

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is an error, not a silent fallback."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but no CUDA device is visible")
    return torch.device(name)


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 where the GPU supports it, fp16 on older GPUs, None (full fp32) on CPU or amp off."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def in_ray_session() -> bool:
    """True inside a Ray Tune trial (where ray.tune.report works)."""
    try:
        from ray.tune import get_context

        return get_context().get_trial_id() is not None
    except Exception:
        return False


def set_threads(requested: int) -> int:
    """Use `requested` torch threads, or (0) the CPUs Ray assigned to this trial."""
    threads = requested
    if threads == 0 and in_ray_session():
        import ray

        threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """All RNG states, as plain tensors and lists a weights_only checkpoint can hold."""
    numpy_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))  # ("MT19937", keys, pos, ...)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "numpy_pos": numpy_state[2],
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
