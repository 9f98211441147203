"""`slideformer export --format onnx|aoti` (the C++ program running the Python package) and
`slideformer predict` of an AOTInductor package: the exported files give the logits of the
checkpoint's module (1e-4) from ONNX Runtime, from C++ and from Python, for a checkpoint of each
model family (fashion, fashion_mvit)."""
import onnxruntime
import pytest
import torch

import slideformer.aoti
from conftest import fashion_test_images, program_result, read_logits, run_program

IMAGES = 300


@pytest.fixture(scope="module", params=["fashion", "fashion_mvit"])
def checkpoint(request):
    """A short training's checkpoint of each model family."""
    return request.getfixturevalue(f"{request.param}_checkpoint")


@pytest.fixture(scope="module")
def module_logits(checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "module.f32"
    run_program("eval", "--checkpoint", checkpoint, "--limit", IMAGES, "--logits", path)
    return read_logits(path)


def test_onnx_export_of_a_checkpoint_runs_in_onnx_runtime(checkpoint, module_logits, tmp_path):
    out = tmp_path / "model.onnx"
    printed = run_program("export", "--format", "onnx", "--checkpoint", checkpoint, "--out", out)
    assert f"to {out} (onnx): input (N, 1, 28, 28) floats in [0, 1]" in printed
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": fashion_test_images(IMAGES).numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(logits), module_logits, rtol=1e-4, atol=1e-4)


def test_aoti_package_of_a_checkpoint_runs_from_cpp_and_python(checkpoint, module_logits, tmp_path):
    package = tmp_path / "model.pt2"
    run_program("export", "--format", "aoti", "--checkpoint", checkpoint, "--out", package)
    printed = run_program("predict", "--model", package, "--limit", IMAGES, "--logits", tmp_path / "cpp.f32")
    assert f"exported model {package}: test accuracy" in printed
    torch.testing.assert_close(read_logits(tmp_path / "cpp.f32"), module_logits, rtol=1e-4, atol=1e-4)
    compiled = slideformer.aoti.load(package)
    images = fashion_test_images(IMAGES)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), module_logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(compiled(images[:1]), module_logits[:1], rtol=1e-4, atol=1e-4)  # any batch size


def test_export_with_a_missing_interpreter_says_which(fashion_checkpoint, tmp_path):
    result = program_result("export", "--format", "onnx", "--checkpoint", fashion_checkpoint,
                            "--out", tmp_path / "m.onnx", "--python", tmp_path / "no-python")
    assert result.returncode == 1 and not (tmp_path / "m.onnx").exists()
    assert (f"slideformer: error: cannot run the Python interpreter '{tmp_path / 'no-python'}' "
            "(No such file or directory): name one with --python or SLIDEFORMER_PYTHON") in result.stderr


def test_export_with_an_interpreter_lacking_torch_says_what_it_needs(fashion_checkpoint, tmp_path):
    bare = tmp_path / "bare-python"
    bare.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
    bare.chmod(0o755)
    result = program_result("export", "--format", "aoti", "--checkpoint", fashion_checkpoint,
                            "--out", tmp_path / "m.pt2", "--python", bare)
    assert result.returncode == 1
    assert "No module named 'torch'" in result.stderr
    assert (f"slideformer: error: {bare} -m slideformer export --format aoti failed (exit status 1): it needs "
            "torch 2.11 and the slideformer Python package (docs/python.md)") in result.stderr


def test_predict_refuses_a_damaged_package(tmp_path):
    package = tmp_path / "broken.pt2"
    package.write_bytes(b"not a zip file")
    result = program_result("predict", "--model", package, "--limit", "10")
    assert result.returncode == 1
    assert f"slideformer: error: {package}: not a loadable AOTInductor package" in result.stderr

