"""Running a test file's Triton tests on CPU under the Triton interpreter (shared by the kernel test files).

`TRITON_INTERPRET=1` must be set before triton itself is imported (triton's own `tl.sum`, `tl.cumsum`, ... are
decorated at import). Under pytest, triton is usually imported long before a test module (transformers' modeling
modules import it), so each kernel test file marks its Triton tests with a fixture calling `require_interpreter`
(they skip themselves in such a process) and has one test calling `run_under_interpreter`, which runs them in a
fresh pytest subprocess with `TRITON_INTERPRET=1` set from the start.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from hf_rankprune.kernels.backend import ENV_VAR

REPO = Path(__file__).resolve().parents[1]


def interpreter_active() -> bool:
    """Whether triton was imported with TRITON_INTERPRET=1 (its standard library is then interpreted too)."""
    if "triton" not in sys.modules or os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import triton.language as tl

    return type(tl.sum).__name__ == "InterpretedFunction"


def require_interpreter(module_names) -> None:
    """Skip unless the interpreter is active; (re)load the kernel modules (in the order given) so that their
    kernels are interpreted even if a module was imported before without it."""
    pytest.importorskip("triton")
    if not interpreter_active():
        pytest.skip("needs TRITON_INTERPRET=1 before triton is imported: run by the file's interpreter-suite test")
    for name in module_names:
        module = importlib.import_module(name)
        if any(type(obj).__name__ == "JITFunction" for obj in vars(module).values()):
            importlib.reload(module)


def run_under_interpreter(test_file: str, keyword: str, timeout: int = 900) -> None:
    """Run the tests of `test_file` selected by `-k keyword` in one pytest subprocess with TRITON_INTERPRET=1 set
    from the start, and assert that they ran and passed."""
    pytest.importorskip("triton")
    if interpreter_active():
        pytest.skip("the interpreter is active in this process: the Triton tests run directly")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env.pop(ENV_VAR, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pytest", test_file, "-q", "-p", "no:cacheprovider", "-k", keyword]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in summary and "error" not in summary, out.stdout[-3000:]


class FakeCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA: the dispatch's device rule, without a GPU."""

    is_cuda = True


def stub_kernel_modules(monkeypatch, functions: dict[str, dict[str, str]]) -> list:
    """Put stub modules in place of Triton kernel modules ({module: {function: label}}): each stub records
    `(label, args)` in the returned list and answers ("triton", None), so dispatch tests see the routing."""
    calls = []

    def stub(label):
        def forward(*args):
            calls.append((label, args))
            return "triton", None

        return forward

    for module_name, names in functions.items():
        module = types.ModuleType(module_name)
        for function, label in names.items():
            setattr(module, function, stub(label))
        monkeypatch.setitem(sys.modules, module_name, module)
    monkeypatch.delenv(ENV_VAR, raising=False)
    return calls
