"""AOTInductor packages (slideformer.aoti) of the MViT family from Python: the compiled package
gives the module's logits (1e-4) at any batch size. (The Slide family's packages are made and
run by test_export_cli.py, through the C++ program.)"""
import pytest
import torch

import slideformer.aoti
from slideformer import nn as snn
from conftest import exportable_model


@pytest.mark.parametrize("preset", ["fashion_mvit", "mvitv2_tiny"])
def test_mvit_packages_match_the_module(tmp_path, preset):
    config = snn.preset(preset)
    model = exportable_model(config)
    package = slideformer.aoti.export(model, tmp_path / "model.pt2")
    compiled = slideformer.aoti.load(package)
    shape = (config.in_channels, config.image_size, config.image_size)
    for batch in (1, 3):
        images = torch.rand(batch, *shape)
        with torch.no_grad():
            expected = model(images)
            assert expected.abs().max() > 1
            torch.testing.assert_close(compiled(images), expected, rtol=1e-4, atol=1e-4)
