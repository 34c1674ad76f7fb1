"""Where models run (the device choice, the ONNX/GPU rule; checked without a GPU, the GPU path
itself is bench/gpu_check.py's job) and `fenlei serve`'s start-up errors as one line."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import torch

from fenlei import predict as predict_module
from fenlei.cli import main
from fenlei.errors import ConfigError
from fenlei.onnx import export_onnx
from fenlei.predict import OnnxModule, Predictor
from fenlei.runtime import resolve_device
from fenlei.serve.app import _load, _workers
from fenlei.serve.schemas import ServeSettings

from .conftest import copy_run

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_auto_is_the_cpu_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="device must be one of"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_a_gpu_runs_the_torch_model_even_with_model_onnx(
    serve_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = copy_run(serve_run, tmp_path / "run")
    export_onnx(run)
    loaded = predict_module.load_run(run)
    cuda = torch.device("cuda")
    assert isinstance(
        predict_module._backend_model(loaded, "auto", torch.device("cpu")), OnnxModule
    )
    assert predict_module._backend_model(loaded, "auto", cuda) is loaded.model
    with pytest.raises(ConfigError, match="ONNX backend runs on the CPU"):
        predict_module._backend_model(loaded, "onnx", cuda)
    cpu = Predictor.from_run(run, device="cpu")
    assert cpu.backend == "onnx" and cpu.device == torch.device("cpu")


def test_one_worker_per_model_on_a_gpu(serve_run: Path) -> None:
    from dataclasses import replace

    info = _load(serve_run, ServeSettings(device="cpu")).info()
    on_gpu = replace(info, device="cuda", serve_chunk=8)  # what a GPU load says; nothing runs
    assert _workers(on_gpu, ServeSettings()) == 1
    assert _workers(on_gpu, ServeSettings(workers=3)) == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    if "--port" not in args:
        args = [*args, "--port", str(_free_port())]
    code = main(["serve", *args])
    err = ANSI.sub("", capsys.readouterr().err)
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_serve_reports_a_bad_run_folder_before_starting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = _serve_error(capsys, [str(tmp_path / "nothing")])
    assert "is not a run folder" in line


def test_serve_on_cuda_without_a_gpu_is_one_error_line(
    capsys: pytest.CaptureFixture[str], serve_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = _serve_error(capsys, [str(serve_run), "--device", "cuda"])
    assert "no CUDA GPU" in line


def test_serve_rejects_an_unknown_device_as_a_usage_error(
    capsys: pytest.CaptureFixture[str], serve_run: Path
) -> None:
    code = main(["serve", str(serve_run), "--device", "gpu"])
    err = ANSI.sub("", capsys.readouterr().err)
    assert code == 2 and "Traceback" not in err
    assert "'gpu' is not one of" in err


def test_serve_reports_a_port_in_use_before_loading(
    capsys: pytest.CaptureFixture[str], serve_run: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = _serve_error(capsys, [str(serve_run), "--port", str(port)])
    assert f"cannot listen on 127.0.0.1:{port}" in line
