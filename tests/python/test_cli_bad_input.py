"""Bad input for every command of the slideformer program: each case ends with one line,
"slideformer: error: <message>", a failure exit status (1, or CLI11's above 100 for command-line
mistakes), no crash, and leaves the files it was given as they were."""
import gzip
import os
import pickletools
import shutil
import subprocess
import zipfile

import pytest
import torch

from test_cli import BIN, DATA, checked, digest, run

# The cases save crafted TorchScript archives, as the program's checkpoints are.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated:DeprecationWarning")

TINY = ["--preset", "fashion", "--limit", "64", "--batch-size", "64", "--threads", "1", "--epochs", "1"]


def idx(dims, payload, magic_type=8):
    header = bytes([0, 0, magic_type, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + bytes(payload)


def write_split(directory, split, images, labels):
    (directory / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
    (directory / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))


def data_dir(root, name, n=64, size=28, image_count=None, label_count=None, magic_type=8,
             label_value=1, payload_bytes=None):
    """Train and test splits of n synthetic images, damaged as the arguments say."""
    directory = root / name
    directory.mkdir()
    image_count = n if image_count is None else image_count
    payload = n * size * size if payload_bytes is None else payload_bytes
    images = idx([image_count, size, size], [7] * payload, magic_type)
    label_count = n if label_count is None else label_count
    labels = idx([label_count], [label_value] * label_count)
    for split in ("train", "t10k"):
        write_split(directory, split, images, labels)
    return directory


class Archive:
    """A copy of a checkpoint with attributes changed (TorchScript archives keep their types)."""

    def __init__(self, source):
        self.source = source

    def changed(self, target, **values):
        archive = torch.jit.load(str(self.source))
        for name, value in values.items():
            setattr(archive, name, value)
        torch.jit.save(archive, str(target))
        return target


class Identity(torch.nn.Module):
    def forward(self, x):
        return x


class IntegerLogits(torch.nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 10, dtype=torch.long)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every file the cases refer to, by name."""
    root = tmp_path_factory.mktemp("bad_input")
    run_dir = root / "run"
    checked("train", *TINY, "--out", run_dir)
    checkpoint = run_dir / "checkpoint.pt"
    model = root / "model.pt"
    checked("export", "--checkpoint", checkpoint, "--out", model)
    f = {"root": root, "run": run_dir, "ckpt": checkpoint, "model": model, "nowhere": root / "nowhere"}
    for name in ("truncated", "empty", "pickle", "a_file", "linear", "identity", "int_logits"):
        f[name] = root / f"{name}.pt"
    for name in ("mid_epoch", "truncated_run"):
        f[name] = root / name
        f[name].mkdir()
    data = checkpoint.read_bytes()
    f["truncated"].write_bytes(data[: len(data) // 2])
    f["empty"].write_bytes(b"")
    torch.save({"weights": torch.zeros(3)}, f["pickle"])
    f["a_file"].write_text("not a directory")
    shutil.copy(f["truncated"], f["truncated_run"] / "checkpoint.pt")
    archive = Archive(checkpoint)
    f["v3"] = archive.changed(root / "v3.pt", format="slideformer-checkpoint-v3")
    f["bad_json"] = archive.changed(root / "bad_json.pt", model_config='{"family": "slide_transformer", ')
    config = torch.jit.load(str(checkpoint)).model_config
    f["mvit"] = archive.changed(root / "mvit.pt", model_config=config.replace('"slide_transformer"', '"mvit9"'))
    f["kernel4"] = archive.changed(root / "kernel4.pt", model_config=config.replace('"kernel_size":3', '"kernel_size":4'))
    f["narrow"] = archive.changed(root / "narrow.pt", model_config=config.replace('"embed_dim":48', '"embed_dim":24'))
    f["batch0"] = archive.changed(root / "batch0.pt", batch_size=0)
    # A run whose checkpoint sits 5 steps into an epoch of 1 step (data it was not trained on).
    archive.changed(f["mid_epoch"] / "checkpoint.pt", step_in_epoch=5, global_step=5)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(f["linear"]))
    torch.jit.save(torch.jit.script(Identity()), str(f["identity"]))
    torch.jit.save(torch.jit.script(IntegerLogits()), str(f["int_logits"]))
    f["magic"] = data_dir(root, "magic", magic_type=9)
    f["cut"] = data_dir(root, "cut", payload_bytes=1000)
    f["labels"] = data_dir(root, "labels", label_count=63)
    f["size32"] = data_dir(root, "size32", size=32)
    f["label12"] = data_dir(root, "label12", label_value=12)
    f["gzip"] = data_dir(root, "gzip")
    for split in ("train", "t10k"):
        path = f["gzip"] / f"{split}-images-idx3-ubyte.gz"
        path.write_bytes(path.read_bytes()[:30] + b"garbage!" * 20)
    f["good_data"] = data_dir(root, "good_data")
    f["digests"] = {name: digest(f[name]) for name in ("ckpt", "model")}
    return f


# (case id, arguments, message after "slideformer: error: "). {name} is a path from `files`;
# {out} is a fresh directory of the case's own.

def checkpoint_cases(*more_args, weights=True):
    """Damaged or foreign files given as --checkpoint (and, with `weights`, weights that do not fit)."""
    cases = [
        ("missing", "nowhere", "{nowhere}: cannot open the checkpoint (No such file or directory)"),
        ("directory", "root", "{root}: is a directory, not a checkpoint file"),
        ("truncated", "truncated", "{truncated}: not a readable checkpoint (truncated or corrupt)"),
        ("empty", "empty", "{empty}: not a readable checkpoint (truncated or corrupt)"),
        ("exported-model", "model", "{model}: is an exported TorchScript model, not a checkpoint (predict takes those)"),
        ("pickle", "pickle", "{pickle}: not a readable checkpoint (truncated or corrupt)"),
        ("format-v3", "v3", "{v3}: checkpoint format 'slideformer-checkpoint-v3' is not one this program reads "
                            "(slideformer-checkpoint-v2 or slideformer-checkpoint-v1)"),
        ("bad-json", "bad_json", "{bad_json}: model description is not valid JSON ("),
        ("unknown-family", "mvit", "{mvit}: unknown model family 'mvit9' (this program builds 'slide_transformer' and 'mvit')"),
        ("option-out-of-range", "kernel4", "{kernel4}: model option 'kernel_size' must be odd and in [1, 31], got 4"),
        ("recipe-out-of-range", "batch0", "{batch0}: checkpoint's 'batch_size' must be >= 1, got 0"),
    ]
    if weights:
        cases.append(("weights-of-another-model", "narrow", "{narrow}: weights do not fit the model: "))
    return [(case, ["--checkpoint", "{" + name + "}", *more_args], message) for case, name, message in cases]


def data_cases(split, *more_args):
    """Damaged data directories given as --data (the train split is read first by train)."""
    cases = [
        ("data-missing", "nowhere", "{nowhere}/SPLIT-images-idx3-ubyte.gz: cannot open the file"),
        ("data-magic", "magic", "{magic}/SPLIT-images-idx3-ubyte.gz: not an IDX file of 3-d unsigned bytes (bad magic number)"),
        ("data-truncated", "cut", "{cut}/SPLIT-images-idx3-ubyte.gz: truncated: expected 50176 data bytes, found 1000"),
        ("data-label-count", "labels",
         "{labels}/SPLIT-labels-idx1-ubyte.gz: has 63 labels for 64 images in {labels}/SPLIT-images-idx3-ubyte.gz"),
        ("data-label-range", "label12", "{label12}/SPLIT-labels-idx1-ubyte.gz: corrupt: label 12 outside 0..9"),
        ("data-gzip", "gzip", "{gzip}/SPLIT-images-idx3-ubyte.gz: corrupt gzip data"),
    ]
    return [(case, [*more_args, "--data", "{" + name + "}"], message.replace("SPLIT", split))
            for case, name, message in cases]


UNKNOWN_PRESET = ("--preset: swin_huge not in {{slide_swin_tiny,slide_swin_small,slide_swin_base,fashion,"
                  "mvitv2_tiny,mvitv2_small,mvitv2_base,fashion_mvit}}")
# summary also takes the video presets.
UNKNOWN_SUMMARY_PRESET = UNKNOWN_PRESET[:-2] + ",mvit_v1_b,mvit_v2_s,moving_mvit}}"

SUMMARY = [
    ("no-model", [], "Exactly 1 option from [--preset,--checkpoint] is required"),
    ("preset-and-checkpoint", ["--preset", "fashion", "--checkpoint", "{ckpt}"],
     "Exactly 1 option from [--preset,--checkpoint] is required and 2 were given"),
    ("unknown-preset", ["--preset", "swin_huge"], UNKNOWN_SUMMARY_PRESET),
    ("video-preset-image-size", ["--preset", "moving_mvit", "--image-size", "32"],
     "--image-size: a video preset takes clips of its own size, got --image-size 32 with --preset moving_mvit"),
    ("image-size-text", ["--preset", "fashion", "--image-size", "big"], "--image-size: must be an integer in [1, 4096], got 'big'"),
    ("image-size-zero", ["--preset", "fashion", "--image-size", "0"], "--image-size: must be an integer in [1, 4096], got '0'"),
    ("image-size-huge", ["--preset", "fashion", "--image-size", "99999"], "--image-size: must be an integer in [1, 4096], got '99999'"),
    ("image-size-odd", ["--preset", "fashion", "--image-size", "29"],
     "--image-size 29: model option 'patch_size' must be a divisor of image_size 29, got 2"),
    *checkpoint_cases(weights=False),
    ("unknown-option", ["--preset", "fashion", "--verbose"], "The following argument was not expected: --verbose"),
    ("extra-argument", ["--preset", "fashion", "extra"], "The following argument was not expected: extra"),
]

TRAIN = [
    ("no-out", TINY, "--out is required"),
    ("unknown-preset", ["--preset", "swin_huge", "--out", "{out}"], UNKNOWN_PRESET),
    ("epochs-zero", ["--epochs", "0", "--out", "{out}"], "--epochs: must be an integer in [1, 1000000], got '0'"),
    ("epochs-fraction", ["--epochs", "2.5", "--out", "{out}"], "--epochs: must be an integer in [1, 1000000], got '2.5'"),
    ("batch-negative", ["--batch-size", "-4", "--out", "{out}"], "--batch-size: must be an integer >= 1, got '-4'"),
    ("lr-zero", ["--lr", "0", "--out", "{out}"], "--lr: must be a number > 0, got '0'"),
    ("lr-nan", ["--lr", "nan", "--out", "{out}"], "--lr: must be a number > 0, got 'nan'"),
    ("weight-decay-negative", ["--weight-decay", "-0.1", "--out", "{out}"], "--weight-decay: must be a number >= 0, got '-0.1'"),
    ("label-smoothing-above-1", ["--label-smoothing", "1.5", "--out", "{out}"],
     "--label-smoothing: must be a number in [0, 1], got '1.5'"),
    ("threads-zero", ["--threads", "0", "--out", "{out}"], "--threads: must be an integer in [1, 1024], got '0'"),
    ("limit-negative", ["--limit", "-1", "--out", "{out}"], "--limit: must be an integer >= 0, got '-1'"),
    ("seed-text", ["--seed", "abc", "--out", "{out}"], "--seed: must be an integer, got 'abc'"),
    ("stop-after-negative", ["--stop-after", "-2", "--out", "{out}"], "--stop-after: must be an integer >= 0, got '-2'"),
    *data_cases("train", *TINY, "--out", "{out}"),
    ("data-image-size", [*TINY, "--data", "{size32}", "--out", "{out}"],
     "model 'fashion' expects 1x28x28 images, the data has 1x32x32"),
    ("resume-nothing", [*TINY, "--resume", "--out", "{out}"],
     "{out}/checkpoint.pt: no checkpoint to resume (train without --resume to start)"),
    ("resume-truncated", ["--resume", "--out", "{truncated_run}"],
     "{truncated_run}/checkpoint.pt: not a readable checkpoint (truncated or corrupt)"),
    ("resume-other-lr", ["--resume", "--lr", "0.001", "--out", "{run}"],
     "{run}/checkpoint.pt: --lr 0.001 differs from the checkpoint's 0.003 (a resumed run keeps its settings: "
     "leave --lr out, or train into another --out)"),
    ("resume-other-preset", ["--resume", "--preset", "slide_swin_tiny", "--out", "{run}"],
     "{run}/checkpoint.pt: the checkpoint holds model 'fashion', not --preset slide_swin_tiny (a resumed run keeps "
     "its model: leave --preset out)"),
    ("resume-other-data", ["--resume", "--out", "{mid_epoch}"],
     "{mid_epoch}/checkpoint.pt: the checkpoint is at step 5 of an epoch, the data (64 images in "
     f"{DATA}) has 1 steps per epoch: not the data it was trained on"),
    ("fresh-over-checkpoint", [*TINY, "--out", "{run}"],
     "{run}/checkpoint.pt: a checkpoint is already there (continue it with --resume, or train into another --out)"),
    ("out-is-a-file", [*TINY, "--out", "{a_file}"], "--out {a_file}: cannot create the directory (Not a directory)"),
    ("out-unwritable", [*TINY, "--out", "/proc"], "--out /proc: cannot write there ("),
]

EVAL = [
    ("no-checkpoint", [], "--checkpoint is required"),
    *checkpoint_cases(),
    *data_cases("t10k", "--checkpoint", "{ckpt}"),
    ("data-image-size", ["--checkpoint", "{ckpt}", "--data", "{size32}"],
     "model 'fashion' expects 1x28x28 images, the data has 1x32x32"),
    ("limit-negative", ["--checkpoint", "{ckpt}", "--limit", "-1"], "--limit: must be an integer >= 0, got '-1'"),
    ("limit-text", ["--checkpoint", "{ckpt}", "--limit", "ten"], "--limit: must be an integer >= 0, got 'ten'"),
    ("predictions-unwritable", ["--checkpoint", "{ckpt}", "--data", "{good_data}", "--predictions", "{nowhere}/p.txt"],
     "{nowhere}/p.txt: cannot write predictions"),
    ("logits-unwritable", ["--checkpoint", "{ckpt}", "--data", "{good_data}", "--logits", "{root}"],
     "{root}: cannot write logits"),
]

EXPORT = [
    ("no-checkpoint", ["--out", "{out}/m.pt"], "--checkpoint is required"),
    ("no-out", ["--checkpoint", "{ckpt}"], "--out is required"),
    *checkpoint_cases("--out", "{out}/m.pt"),
    ("out-in-missing-directory", ["--checkpoint", "{ckpt}", "--out", "{nowhere}/m.pt"],
     "{nowhere}/m.pt: cannot write the model (No such file or directory)"),
    ("out-is-a-directory", ["--checkpoint", "{ckpt}", "--out", "{root}"], "{root}: cannot write the model (Is a directory)"),
    ("out-is-the-checkpoint", ["--checkpoint", "{ckpt}", "--out", "{ckpt}"],
     "{ckpt}: --out is the checkpoint itself (it would be replaced by the model)"),
    ("unknown-option", ["--checkpoint", "{ckpt}", "--out", "{out}/m.pt", "--opset", "17"],
     "The following arguments were not expected: 17 --opset"),
]

PREDICT = [
    ("no-model", [], "--model is required"),
    ("missing", ["--model", "{nowhere}"], "{nowhere}: cannot open the model (No such file or directory)"),
    ("directory", ["--model", "{root}"], "{root}: is a directory, not a model file"),
    ("truncated", ["--model", "{truncated}"], "{truncated}: not a loadable TorchScript model (truncated or corrupt?)"),
    ("empty", ["--model", "{empty}"], "{empty}: not a loadable TorchScript model (truncated or corrupt?)"),
    ("pickle", ["--model", "{pickle}"], "{pickle}: not a loadable TorchScript model (truncated or corrupt?)"),
    ("checkpoint", ["--model", "{ckpt}"], "{ckpt}: is a slideformer checkpoint, not an exported model (export it first)"),
    ("model-fails", ["--model", "{linear}", "--data", "{good_data}"],
     "{linear}: the model failed on [64, 1, 28, 28] images: RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
    ("model-returns-images", ["--model", "{identity}", "--data", "{good_data}"],
     "{identity}: the model returned a tensor of shape [64, 1, 28, 28] (Float) for [64, 1, 28, 28] images, "
     "expected (N, classes) floating-point logits"),
    ("model-returns-integers", ["--model", "{int_logits}", "--data", "{good_data}"],
     "{int_logits}: the model returned a tensor of shape [64, 10] (Long) for [64, 1, 28, 28] images"),
    *data_cases("t10k", "--model", "{model}"),
    ("limit-negative", ["--model", "{model}", "--limit", "-1"], "--limit: must be an integer >= 0, got '-1'"),
    ("predictions-unwritable", ["--model", "{model}", "--data", "{good_data}", "--predictions", "{nowhere}/p.txt"],
     "{nowhere}/p.txt: cannot write predictions"),
    ("logits-unwritable", ["--model", "{model}", "--data", "{good_data}", "--logits", "{root}"], "{root}: cannot write logits"),
]

CASES = [(command, *case) for command, cases in
         (("summary", SUMMARY), ("train", TRAIN), ("eval", EVAL), ("export", EXPORT), ("predict", PREDICT))
         for case in cases]


def test_every_command_has_at_least_15_distinct_cases():
    for command in ("summary", "train", "eval", "export", "predict"):
        ids = [case for c, case, _, _ in CASES if c == command]
        assert len(ids) >= 15 and len(set(ids)) == len(ids), command


@pytest.mark.parametrize("command,case,args,message", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_bad_input_fails_with_one_line(files, tmp_path, command, case, args, message):
    paths = {**{k: v for k, v in files.items() if k != "digests"}, "out": tmp_path / "out"}
    result = run(command, *[a.format(**paths) for a in args])
    expected = message.format(**paths)
    assert result.returncode == 1 or 100 < result.returncode < 128, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("slideformer: error: "), result.stderr
    assert expected in lines[0], f"\nexpected: {expected}\n     got: {lines[0]}"
    # The good files given to a failed command are unchanged, and no temporary file is left.
    assert {name: digest(files[name]) for name in files["digests"]} == files["digests"]
    assert not list(files["root"].rglob("*.tmp"))


def with_huge_string_length(archive, target):
    """A copy of a TorchScript archive whose data.pkl declares its first string 2 GiB long (the
    record keeps its bytes and a valid CRC: only the length is wrong)."""
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as copy:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data.pkl"):
                position = next(pos for op, _, pos in pickletools.genops(data) if op.name == "BINUNICODE")
                data = data[:position + 1] + (0x7FFFFFF0).to_bytes(4, "little") + data[position + 5:]
            copy.writestr(info.filename, data)
    return target


def peak_memory_mb(*args):
    """(stderr, the peak resident memory in MB) of the program run with `args`."""
    process = subprocess.Popen([str(BIN), *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    stderr = process.stderr.read()
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0  # reaped above
    return stderr, usage.ru_maxrss / 1024


@pytest.mark.parametrize("command,option,name", [("eval", "--checkpoint", "ckpt"), ("predict", "--model", "model")])
def test_a_length_past_the_record_is_refused_before_torch_reserves_it(files, tmp_path, command, option, name):
    """torch's unpickler would reserve (and zero) the 2 GiB before finding the record too short."""
    damaged = with_huge_string_length(files[name], tmp_path / "damaged.pt")
    stderr, peak = peak_memory_mb(command, option, damaged, "--data", DATA, "--limit", "8")
    assert stderr.startswith(f"slideformer: error: {damaged}: not a "), stderr
    assert stderr.count("\n") == 1, stderr
    assert peak < 100 + peak_memory_mb(command, option, files["nowhere"], "--data", DATA, "--limit", "8")[1]
