"""Writes the weight files that tests/io/test_weight_files.cpp reads (tests/io/data/), with torch.save
and the safetensors package. Every value follows a formula the C++ test recomputes:
ramp(shape, dtype, scale, shift) = arange(numel) * scale + shift, viewed as shape. Run it again after
changing it (python tests/io/make_fixtures.py); tests/python/test_weights.py checks that the files
here still hold what this script writes."""
import collections
import pathlib
import sys

import torch
from safetensors.torch import save_file
from yacs.config import CfgNode

DATA = pathlib.Path(__file__).resolve().parent / "data"


def ramp(shape, dtype=torch.float32, scale=0.25, shift=0.0):
    count = 1
    for size in shape:
        count *= size
    return (torch.arange(count, dtype=torch.float64) * scale + shift).to(dtype).view(shape)


def module_state(shift):
    """An OrderedDict state dict (with _metadata) of a small module, every tensor a ramp."""
    module = torch.nn.Sequential(collections.OrderedDict(
        [("fc", torch.nn.Linear(3, 2)), ("norm", torch.nn.LayerNorm(2))]))
    with torch.no_grad():
        for index, parameter in enumerate(module.parameters()):
            parameter.copy_(ramp(parameter.shape, shift=shift + index))
    return module.state_dict()


def fixtures():
    """{file name: (what it holds, how it is written)}."""
    plain = {"weight": ramp((2, 3)), "bias": torch.tensor([-1.0, 0.5]), "steps": torch.tensor(7)}
    base = ramp((4, 6), scale=1.0)
    views = {"base": base, "rows": base[1:3], "columns": base[:, 1::2], "transposed": base.t(),
             "half": ramp((5,), torch.float16, 0.125), "bfloat16": ramp((5,), torch.bfloat16, 0.125),
             "double": ramp((3,), torch.float64, 1 / 3), "long": ramp((4,), torch.int64, 1_000_000_007),
             "flag": torch.tensor([True, False])}
    model = module_state(0.0)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(ramp((2,)))], lr=0.1)
    optimizer.param_groups[0]["params"][0].grad = torch.ones(2)
    optimizer.step()
    config = CfgNode({"MODEL": CfgNode({"NAME": "slide_swin_tiny", "DROP_PATH_RATE": 0.2}), "SEED": 0})
    checkpoint = {"model": model, "state_dict_ema": module_state(10.0), "optimizer": optimizer.state_dict(),
                  "lr_scheduler": {"last_epoch": 3, "base_lrs": [0.1]}, "max_accuracy": 81.5, "epoch": 3,
                  "config": config}
    safetensors = {"a.weight": ramp((2, 3)), "a.bias": ramp((3,), torch.float16, 0.5),
                   "b": ramp((2, 2), torch.bfloat16, 0.5, -1.0), "index": ramp((3,), torch.int64, 7),
                   "mask": torch.tensor([True, False, True]), "empty": torch.zeros(0, 3)}
    return {
        "plain.pt": (plain, lambda value, path: torch.save(value, path)),
        "views.pt": (views, lambda value, path: torch.save(value, path)),
        "protocol4.pt": (plain, lambda value, path: torch.save(value, path, pickle_protocol=4)),
        "checkpoint.pt": (checkpoint, lambda value, path: torch.save(value, path)),
        "weights.safetensors": (safetensors, lambda value, path: save_file(
            value, path, metadata={"format": "pt", "source": "tests/io/make_fixtures.py"})),
    }


def main(out=DATA):
    out.mkdir(exist_ok=True)
    for name, (value, write) in fixtures().items():
        write(value, out / name)


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DATA)
