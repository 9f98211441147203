"""A checkpoint of the C++ program loads into the Python modules: the same parameter and buffer
names, shapes and order, and the same logits (1e-5)."""
import torch

import slideformer
from conftest import fashion_test_images, read_logits, run_program

IMAGES = 300


def test_python_modules_have_the_cpp_parameter_names_shapes_and_order(fashion_checkpoint):
    cpp = torch.jit.load(str(fashion_checkpoint)).model
    python = slideformer.load_checkpoint(fashion_checkpoint)
    assert [(n, p.shape) for n, p in python.named_parameters()] == [(n, p.shape) for n, p in cpp.named_parameters()]
    assert [(n, b.shape) for n, b in python.named_buffers()] == [(n, b.shape) for n, b in cpp.named_buffers()]
    frozen = [n for n, p in python.named_parameters() if not p.requires_grad]
    assert frozen == [f"stages.0.{i}.attn.identity_weight" for i in range(2)]


def test_a_cpp_checkpoint_gives_the_same_logits_in_python(fashion_checkpoint, tmp_path):
    run_program("eval", "--checkpoint", fashion_checkpoint, "--limit", IMAGES, "--logits", tmp_path / "cpp.f32")
    model = slideformer.nn.InputNormalization(slideformer.load_checkpoint(fashion_checkpoint))
    with torch.no_grad():
        python_logits = model(fashion_test_images(IMAGES))
    torch.testing.assert_close(python_logits, read_logits(tmp_path / "cpp.f32"), rtol=1e-5, atol=1e-5)
