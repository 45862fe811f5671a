"""Backend selection for the kernels: Triton on CUDA tensors, the torch reference elsewhere.

Order of precedence: the `backend` argument of a call, then the innermost `use_backend(...)` context,
then the environment variable `HF_RANKPRUNE_KERNEL_BACKEND`, then "auto".

- "auto": Triton when the tensors are on a CUDA device and triton is importable, torch otherwise
  (CPU never enters Triton in auto mode, even if triton or fla is installed).
- "torch": the torch reference (differentiable).
- "triton": the Triton kernels whatever the device; on CPU this needs `TRITON_INTERPRET=1` set before
  the kernel modules are first imported (fp32 only; for tests).

The Triton kernels are forward only: a call that needs gradients (grad mode on and any input with
`requires_grad`) is routed to the torch reference even when "triton" is asked for.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import torch

__all__ = ["BACKENDS", "ENV_VAR", "get_backend", "resolve_backend", "use_backend"]

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "HF_RANKPRUNE_KERNEL_BACKEND"

_local = threading.local()


def _check(backend: str) -> str:
    name = str(backend).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; expected one of {BACKENDS}")
    return name


def _stack() -> list[str]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Force a backend ("auto" | "torch" | "triton") inside a `with` block (per thread, nestable)."""
    stack = _stack()
    stack.append(_check(backend))
    try:
        yield
    finally:
        stack.pop()


def get_backend(backend: str | None = None) -> str:
    """The requested backend name before device rules: argument, context, environment, then "auto"."""
    if backend is not None:
        return _check(backend)
    stack = _stack()
    if stack:
        return stack[-1]
    env = os.environ.get(ENV_VAR, "").strip()
    return _check(env) if env else "auto"


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _needs_grad(tensors) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def resolve_backend(backend: str | None, tensors) -> str:
    """The backend a call with these tensors runs on: "torch" or "triton"."""
    name = get_backend(backend)
    if _needs_grad(tensors):
        return "torch"
    if name == "auto":
        on_cuda = any(isinstance(t, torch.Tensor) and t.is_cuda for t in tensors)
        return "triton" if on_cuda and triton_available() else "torch"
    return name
