"""The backend switch: names, context manager, environment variable, clear errors."""

import os
import subprocess
import sys

import pytest
import torch

import effdrop_triton as ed
from effdrop_triton import backend


def test_set_get_and_context_manager():
    ed.set_backend("torch")
    with ed.use_backend("auto"):
        assert ed.get_backend() == "auto"
    assert ed.get_backend() == "torch"


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter makes Triton run on CPU")
def test_forcing_triton_on_cpu_raises():
    with ed.use_backend("triton"), pytest.raises(RuntimeError, match="backend 'triton' was requested but"):
        ed.drop_neuron(torch.randn(4, 4), 0.5)


def test_fp64_on_triton_backend_raises_and_auto_falls_back():
    x = torch.randn(4, 4, dtype=torch.float64)
    with ed.use_backend("triton"), pytest.raises(RuntimeError, match="fp32/fp16/bf16"):
        ed.drop_neuron(x, 0.5)
    assert not backend.use_triton(x)


def _run(code, **env):
    env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_environment_variable_selects_backend():
    result = _run("import effdrop_triton as ed; print(ed.get_backend())", EFFDROP_BACKEND="torch")
    assert result.stdout.strip() == "torch", result.stderr
    result = _run("import effdrop_triton", EFFDROP_BACKEND="gpu")
    assert result.returncode != 0 and "backend must be one of" in result.stderr


def test_import_does_not_touch_cuda_or_triton():
    code = (
        "import sys, torch\n"
        "torch.cuda.is_available = lambda: (_ for _ in ()).throw(AssertionError('queried CUDA'))\n"
        "import effdrop_triton\n"
        "assert 'triton' not in sys.modules, 'triton imported eagerly'\n"
        "print('ok')\n"
    )
    result = _run(code)
    assert result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize("value,interpreting", [("1", True), ("true", True), ("0", False), ("false", False),
                                                ("off", False), ("", False)])
def test_triton_interpret_is_read_as_triton_reads_it(monkeypatch, value, interpreting):
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert backend._interpreting() is interpreting
