"""slideformer.weights (the C++ readers of libslideformer_io) against torch.save / torch.load and the
safetensors package: the same tensors, dtypes, shapes, strides and storage sharing; damaged
files refused with their message."""
import collections
import importlib.util
import pathlib
import struct
import zipfile

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import slideformer.weights as weights

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "io"


def assert_same(actual, expected):
    """Same names in the same order, and the same tensors to the bit (dtype, shape, strides)."""
    assert list(actual) == list(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert actual[name].shape == tensor.shape, name
        assert actual[name].stride() == tensor.stride(), name
        assert torch.equal(actual[name], tensor), name


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4, 2, bias=False), torch.nn.LayerNorm(2))


def views():
    base = torch.arange(24, dtype=torch.float32).view(4, 6)
    return {"base": base, "rows": base[1:3], "columns": base[:, 1::2], "transposed": base.t(),
            "half": torch.randn(5).half(), "bfloat16": torch.randn(5).bfloat16(), "double": torch.randn(3).double(),
            "long": torch.arange(4) * 1_000_000_007, "int": torch.arange(3, dtype=torch.int32), "flag": torch.tensor([True, False]),
            "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3)}


CASES = {
    "plain dict": lambda: {"weight": torch.randn(2, 3), "bias": torch.randn(2)},
    "OrderedDict state dict": lambda: small_model().state_dict(),
    "shared storages and half types": views,
    "parameters": lambda: {"p": torch.nn.Parameter(torch.randn(3)), "q": torch.nn.Parameter(torch.randn(2), requires_grad=False)},
    "OrderedDict of pairs": lambda: collections.OrderedDict([("b", torch.ones(1)), ("a", torch.zeros(2))]),
}


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("case", list(CASES))
def test_torch_save_files_read_as_torch_load_reads_them(tmp_path, case, protocol):
    path = tmp_path / "weights.pt"
    torch.save(CASES[case](), path, pickle_protocol=protocol)
    expected, actual = torch.load(path, weights_only=False), weights.read(path)  # its safe loader lacks FRAME
    assert_same(actual, expected)
    for a in expected:  # tensors that share a storage in torch.load's result share it here too
        for b in expected:
            shared = expected[a].untyped_storage().data_ptr() == expected[b].untyped_storage().data_ptr()
            assert (actual[a].untyped_storage().data_ptr() == actual[b].untyped_storage().data_ptr()) == shared


def test_checkpoints_read_their_model_ema_and_nothing_else(tmp_path):
    """As the official Slide-Transformer code saves: model, EMA, optimizer, scheduler, numbers and
    a yacs CfgNode under "config"; reading the weights needs none of those classes."""
    from yacs.config import CfgNode
    model, ema = small_model(), small_model()
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3, 3, 3)).sum().backward()
    optimizer.step()
    path = tmp_path / "ckpt_epoch_3.pth"
    torch.save({"model": model.state_dict(), "state_dict_ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": {"last_epoch": 3}, "max_accuracy": 81.5, "epoch": 3,
                "config": CfgNode({"MODEL": CfgNode({"NAME": "slide_swin_tiny"})})}, path)
    assert weights.state_dict_entries(path) == ["model", "state_dict_ema"]
    assert_same(weights.read(path), model.state_dict())
    assert_same(weights.read(path, "state_dict_ema"), ema.state_dict())
    nested = tmp_path / "nested.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, nested)
    assert_same(weights.read(nested), model.state_dict())
    with pytest.raises(ValueError, match=r"has no state dict 'optimizer' \(it has 'model', 'state_dict_ema'\)$"):
        weights.read(path, "optimizer")


def is_state_dict(value):
    return isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values())


def test_the_fixtures_of_the_cpp_tests_hold_what_make_fixtures_writes():
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    make_fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_fixtures)
    for name, (value, _) in make_fixtures.fixtures().items():
        path = FIXTURES / "data" / name
        if name.endswith(".safetensors"):
            assert_same(dict(sorted(load_file(path).items())), dict(sorted(value.items())))
            continue
        stored = torch.load(path, weights_only=False)
        parts = {"": (stored, value)} if is_state_dict(value) else {k: (stored[k], v) for k, v in value.items() if is_state_dict(v)}
        assert parts, name
        for stored_part, written_part in parts.values():
            assert_same(stored_part, written_part)


def test_safetensors_of_the_package_read_with_their_metadata(tmp_path):
    tensors = {"a": torch.randn(2, 3), "b": torch.randn(4).half(), "c": torch.randn(3, 1).bfloat16(),
               "d": torch.arange(5), "e": torch.tensor([True, False]), "f": torch.zeros(0), "g": torch.tensor(1.5).double()}
    path = tmp_path / "model.safetensors"
    save_file(tensors, path, metadata={"format": "pt", "note": "été"})
    read, metadata = weights.read_safetensors(path)
    assert metadata == {"format": "pt", "note": "été"}
    assert_same(dict(sorted(read.items())), dict(sorted(tensors.items())))
    assert_same(dict(sorted(weights.read(path).items())), dict(sorted(tensors.items())))


def test_safetensors_written_here_load_in_the_package(tmp_path):
    tensors = views()
    path = tmp_path / "out.safetensors"
    weights.save_safetensors(tensors, path, {"format": "pt", "source": "slideformer"})
    loaded = load_file(path)
    assert sorted(loaded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    with safe_open(str(path), "pt") as opened:
        assert opened.metadata() == {"format": "pt", "source": "slideformer"}
    assert not list(tmp_path.glob("*.tmp"))


def safetensors_bytes(header, data=b""):
    text = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(text)) + text + data


def problem(path):
    with pytest.raises(ValueError) as caught:
        weights.read(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    return message[len(f"{path}: "):]


TWO_FLOATS = '"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'
BAD_SAFETENSORS = {
    "truncated": (safetensors_bytes("{" + TWO_FLOATS + "}", b"1234"),
                  "truncated: tensor 'a' (bytes 0 to 8 of the data) goes beyond the end of the file (the data has 4 bytes)"),
    "header length beyond the file": (struct.pack("<Q", 1000) + b"{}",
                                      "the header length 1000 goes beyond the end of the file (10 bytes)"),
    "overlapping offsets": (safetensors_bytes("{" + TWO_FLOATS + ',"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', bytes(12)),
                            "tensors 'a' and 'b' overlap (data bytes 0 to 8 and 4 to 12)"),
    "unknown dtype": (safetensors_bytes('{"a":{"dtype":"F7","shape":[2],"data_offsets":[0,8]}}', bytes(8)),
                      'tensor \'a\' has an unknown dtype "F7"'),
    "wrong size": (safetensors_bytes('{"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}}', bytes(8)),
                   "tensor 'a': data_offsets [0, 8] hold 8 bytes, its dtype F64 and shape [2] need 16"),
}


@pytest.mark.parametrize("case", list(BAD_SAFETENSORS))
def test_damaged_safetensors_are_refused_with_their_problem(tmp_path, case):
    content, expected = BAD_SAFETENSORS[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    assert problem(path) == expected


def test_damaged_and_foreign_torch_save_files_are_refused_with_their_problem(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.ones(2)], path)
    assert problem(path) == "holds no state dict (a dict of tensors, at the top level or under one key): it holds a list"
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, path)
    assert problem(path) == ("holds no state dict (a dict of tensors, at the top level or under one key): it holds a dict "
                             "with keys 'epoch', 'config'")
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    assert problem(path) == ("a legacy torch.save file (PyTorch before 1.6), which is not supported: load it with torch.load "
                             "and save it again with a current PyTorch")
    torch.save({"w": torch.ones(2)}, path)
    path.write_bytes(path.read_bytes()[:300])
    assert problem(path) == "truncated or not a ZIP archive (no end-of-archive record)"
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    assert problem(scripted).endswith("; it is a TorchScript archive (torch.jit.save, or a slideformer checkpoint)")


def test_a_pickle_whose_string_outgrows_its_record_is_refused_before_reading(tmp_path):
    """A string that declares 2^32 - 1 bytes in a pickle of a few hundred: torch.load would reserve
    4 GiB for it; the archive check refuses it from the declared length."""
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):
                at = data.index(b"X\x01\x00\x00\x00w")
                data = data[:at + 1] + b"\xff\xff\xff\xff" + data[at + 5:]
            target.writestr(info.filename, data)
    weights.check_torch_archive(good)
    message = f"{bad}: good/data.pkl byte {at}: a string declares 4294967295 bytes, but only "
    with pytest.raises(ValueError, match=f"^{message}"):
        weights.check_torch_archive(bad)
    with pytest.raises(ValueError, match=f"^{message}"):
        weights.read(bad)

