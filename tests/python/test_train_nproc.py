"""`slideformer train --nproc N` and the program under a launcher: N processes (Gloo over loopback)
train as one process does at the same global batch, resume each other's checkpoints, and fail
cleanly: a killed rank, Ctrl-C of the launcher, a port in use, a rank that never arrives."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from test_cli import BIN, checkpoint_tensors, checked, digest, run

# 250 images in global batches of 16: 16 steps per epoch, the last batch 10 images, so 2 and 3
# ranks take unequal parts (8/8 ... 5/5 and 6/5/5 ... 4/3/3). Augmentation and drop path on.
# AdamW divides each gradient element by its running magnitude, so an element whose gradient
# nearly cancels moves by steps of about the learning rate that follow its rounding error, which
# depends on the order of the sums (how the batch is split); at the default 3e-3 such parameters
# (stage 2's biases) drift apart by up to 1.4e-5 of their norm in 32 steps, at 1e-3 by 6.5e-6 with
# g++ but by 1.4e-5 in the sanitizer build (clang -O1, serial kernels), at 3e-4 by 6.7e-6 and 5.9e-6.
LR = ["--lr", "3e-4"]
ARGS = ["--preset", "fashion", "--limit", "250", "--batch-size", "16", "--threads", "1", "--augment",
        "--seed", "5", *LR]
EPOCHS = ["--epochs", "2"]  # 32 steps


def train_args(out, *extra):
    return ["train", *ARGS, *EPOCHS, "--out", out, *extra]


def global_attention_stages(checkpoint):
    """Indices of the stages whose blocks attend globally, from the model description a checkpoint holds."""
    kinds = json.loads(torch.jit.load(str(checkpoint)).model_config)["options"]["stage_kinds"]
    return {index for index, kind in enumerate(kinds) if kind == "global"}


def split_qkv_bias(name, tensor):
    """(query, key, value) parts of a block's qkv bias, or None for other parameters."""
    return tensor.chunk(3) if name.endswith(".attn.qkv.bias") else None


def is_global_attention(name, global_stages):
    """Whether parameter `name` ("[model.]stages.<i>.blocks...") belongs to a global-attention stage."""
    match = re.match(r"(model\.)?stages\.(\d+)\.", name)
    return match is not None and int(match.group(2)) in global_stages


def without_zero_gradient_parts(name, tensor, global_stages):
    """The tensor, less the key bias of a global-attention block: a key bias adds the same amount to
    all of a query's scores, which the softmax cancels, so its gradient is zero in exact arithmetic
    and what it holds is rounding noise, which changes with the order of the sums
    (test_global_attention_key_biases_have_zero_gradient)."""
    parts = split_qkv_bias(name, tensor)
    if parts is None or not is_global_attention(name, global_stages):
        return tensor
    return torch.cat([parts[0], parts[2]])


def assert_parameters_close(a, b, global_stages, rel=1e-5):
    """Every parameter within `rel` of the reference in relative norm, ||a - b|| / ||b||, but for the
    key biases of the global-attention blocks: their value is what AdamW makes of rounding noise
    (measured: off by 50-90% of itself). They have no effect on the output: assert_same_logits
    checks the models' logits."""
    names = [name for name in b if name.startswith("model.")]
    assert names and sorted(name for name in a if name.startswith("model.")) == sorted(names)
    for name in names:
        got, want = a[name].double(), b[name].double()
        if not b[name].is_floating_point():
            assert torch.equal(a[name], b[name]), name
            continue
        got = without_zero_gradient_parts(name, got, global_stages)
        want = without_zero_gradient_parts(name, want, global_stages)
        error = (got - want).norm().item() / want.norm().item()
        assert error <= rel, f"{name}: ||difference|| / ||reference|| = {error}"


def assert_same_logits(out, reference, tmp_path):
    """The two checkpoints' logits on 250 test images agree within 1e-5 of their largest."""
    logits = []
    for run_dir in (out, reference):
        path = tmp_path / f"logits_{len(logits)}.bin"
        checked("eval", "--checkpoint", run_dir / "checkpoint.pt", "--limit", "250", "--logits", path)
        logits.append(torch.from_numpy(np.fromfile(path, dtype=np.float32)).double())
    assert (logits[0] - logits[1]).abs().max().item() <= 1e-5 * logits[1].abs().max().item()


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def progress_losses(stdout):
    return [float(x) for x in re.findall(r"step \d+/\d+  loss (\d+\.\d+)", stdout)]


def assert_same_training(out, reference, stdout, reference_stdout, tmp_path):
    assert_parameters_close(checkpoint_tensors(out / "checkpoint.pt"), checkpoint_tensors(reference / "checkpoint.pt"),
                            global_attention_stages(reference / "checkpoint.pt"))
    assert_same_logits(out, reference, tmp_path)
    got, want = metrics(out), metrics(reference)
    assert [m["epoch"] for m in got] == [m["epoch"] for m in want] == [1, 2]
    for g, w in zip(got, want):
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-5)  # to 5 digits
        assert g["test_accuracy"] == w["test_accuracy"]
    # The progress lines print 4 decimals; the same losses round alike (or differ in the last).
    assert progress_losses(stdout) == pytest.approx(progress_losses(reference_stdout), abs=1.01e-4)
    assert len(progress_losses(stdout)) == 12  # steps 3, 6, 9, 12, 15, 16 of each epoch, by rank 0 alone


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("nproc1")
    return out, checked(*train_args(out))


def test_two_processes_with_small_buckets_train_as_one(one_process, tmp_path):
    """64 KiB buckets (the model's gradients are 0.95 MB): all-reduces launched during the backward."""
    reference, reference_stdout = one_process
    stdout = checked(*train_args(tmp_path, "--nproc", "2", "--bucket-kb", "64"))
    assert "2 processes x 1 threads" in stdout
    assert_same_training(tmp_path, reference, stdout, reference_stdout, tmp_path)
    for record in metrics(tmp_path):
        assert record["processes"] == 2
        assert 0 < record["allreduce_overlapped_seconds"] <= record["allreduce_seconds"]
        assert 0 <= record["allreduce_exposed_seconds"] <= record["backward_seconds"]


def test_three_processes_train_as_one_and_resume_with_two(one_process, tmp_path):
    """A run of 3 ranks stopped after an epoch, then continued by 2: still the one-process run.
    (Default buckets: the whole gradient in one.)"""
    reference, reference_stdout = one_process
    first = checked(*train_args(tmp_path, "--nproc", "3", "--stop-after", "1"))
    assert [m["epoch"] for m in metrics(tmp_path)] == [1]
    second = checked(*train_args(tmp_path, "--nproc", "2", "--resume"))
    assert_same_training(tmp_path, reference, first + second, reference_stdout, tmp_path)


def test_under_torchrun(one_process, tmp_path):
    """torchrun's agent hosts the store (TORCHELASTIC_USE_AGENT_STORE): the ranks join it."""
    reference, _ = one_process
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--no-python",
                             str(BIN), *train_args(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "2 processes x 1 threads" in result.stdout
    assert_parameters_close(checkpoint_tensors(tmp_path / "checkpoint.pt"), checkpoint_tensors(reference / "checkpoint.pt"),
                            global_attention_stages(reference / "checkpoint.pt"))
    assert [m["train_loss"] for m in metrics(tmp_path)] == pytest.approx([m["train_loss"] for m in metrics(reference)],
                                                                          rel=1e-5)


def test_a_rank_without_images_in_a_step(tmp_path):
    """Global batches of 2 over 3 ranks: rank 2 never has an image, and adds zero gradients."""
    small = ["train", "--preset", "fashion", "--limit", "20", "--batch-size", "2", "--threads", "1", "--epochs", "1",
             *LR]
    checked(*small, "--out", tmp_path / "one")
    checked(*small, "--out", tmp_path / "three", "--nproc", "3")
    assert_parameters_close(checkpoint_tensors(tmp_path / "three" / "checkpoint.pt"),
                            checkpoint_tensors(tmp_path / "one" / "checkpoint.pt"),
                            global_attention_stages(tmp_path / "one" / "checkpoint.pt"))
    assert metrics(tmp_path / "three")[0]["train_loss"] == pytest.approx(metrics(tmp_path / "one")[0]["train_loss"],
                                                                         rel=1e-5)


@pytest.fixture(scope="module")
def first_step_gradients(tmp_path_factory):
    """{nproc: the reduced gradients of the first step} of one global batch of 16 images (augmented,
    drop path on) taken by 1, 2 and 3 processes (8/8 and 6/5/5 images each), and the global stages."""
    out = tmp_path_factory.mktemp("gradients")
    gradients = {}
    for nproc in (1, 2, 3):
        checked("train", "--preset", "fashion", "--limit", "32", "--batch-size", "16", "--threads", "1", "--augment",
                "--seed", "5", "--epochs", "1", "--out", out / f"nproc{nproc}", "--nproc", nproc,
                "--save-gradients", out / f"nproc{nproc}.pt")
        gradients[nproc] = dict(torch.load(out / f"nproc{nproc}.pt"))
    return gradients, global_attention_stages(out / "nproc1" / "checkpoint.pt")


@pytest.mark.parametrize("nproc", [2, 3])
def test_first_step_gradients_do_not_depend_on_the_process_count(first_step_gradients, nproc):
    """The gradients themselves (not what AdamW makes of them, which hides a uniform scale): a loss
    weighted per rank rather than per global batch shows here. Within 1e-6 in relative norm as a
    whole, and each parameter's within 1e-5 (float32 sums in another order: measured 5e-7 and
    3.1e-6 at most, the final norm's bias and the stem's convolutions, summed over every pixel)."""
    gradients, global_stages = first_step_gradients
    got, want = gradients[nproc], gradients[1]
    assert sorted(got) == sorted(want) and len(want) > 20
    squared_difference = squared_norm = 0.0
    for name in want:
        g = without_zero_gradient_parts(name, got[name].double(), global_stages)
        w = without_zero_gradient_parts(name, want[name].double(), global_stages)
        error = (g - w).norm().item() / w.norm().item()
        assert error <= 1e-5, f"{name}: ||difference|| / ||reference|| = {error}"
        squared_difference += (g - w).square().sum().item()
        squared_norm += w.square().sum().item()
    assert (squared_difference / squared_norm) ** 0.5 <= 1e-6


def test_global_attention_key_biases_have_zero_gradient(first_step_gradients):
    """What the comparisons leave out is noise: a global-attention block's key bias gets a gradient at
    the level of rounding against its value bias's, a slide-attention block's (whose windows reach
    into zero padding) a real one."""
    gradients, global_stages = first_step_gradients
    ratios = {}
    for name, gradient in gradients[1].items():
        parts = split_qkv_bias(name, gradient.double())
        if parts is not None:
            ratios[name] = parts[1].norm().item() / parts[2].norm().item()
    kinds = {is_global_attention(name, global_stages) for name in ratios}
    assert global_stages and kinds == {True, False}, ratios
    for name, ratio in ratios.items():
        if is_global_attention(name, global_stages):
            assert ratio < 1e-5, (name, ratio)
        else:
            assert ratio > 1e-2, (name, ratio)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_pids(launcher):
    """{rank: pid} of the launcher's child processes."""
    children = open(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read().split()
    ranks = {}
    for pid in map(int, children):
        environment = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        rank = next(v for v in environment if v.startswith(b"RANK="))
        ranks[int(rank[5:])] = pid
    return ranks


def start_and_wait_for(out, line_prefix, *extra):
    """Starts a 2-rank run; returns the launcher once rank 0 printed a line starting `line_prefix`."""
    launcher = subprocess.Popen([str(BIN), *train_args(out, "--nproc", "2", "--timeout", "20", *extra)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in launcher.stdout:
        if line.startswith(line_prefix):
            return launcher
    launcher.kill()
    raise AssertionError(f"the run ended before '{line_prefix}': {launcher.communicate()}")


def assert_checkpoint_loads_at(out, epoch):
    saved = torch.jit.load(str(out / "checkpoint.pt"))
    assert saved.epoch == epoch
    assert "test accuracy" in checked("eval", "--checkpoint", out / "checkpoint.pt", "--limit", "32")
    return saved


@pytest.mark.parametrize("victim", [1, 0])
def test_kill_9_of_a_rank_stops_the_others_naming_it(tmp_path, victim):
    """Rank 1, or rank 0 (which hosts the rendezvous store and writes the checkpoint)."""
    launcher = start_and_wait_for(tmp_path, "epoch 2/2  step 3/16")
    pids = rank_pids(launcher)
    os.kill(pids[victim], signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = launcher.communicate(timeout=60)
    assert time.monotonic() - killed < 20  # within the timeout
    assert launcher.returncode == 1, stderr
    assert f"rank {victim} (pid {pids[victim]}) was killed by signal 9" in stderr
    # The other rank names the lost one (with its pid when the store still answers), in one line.
    other = 1 - victim
    assert re.search(rf"^slideformer: error: .*rank {other}: .* failed: rank {victim} (\(pid {pids[victim]} on [^)]*\) )?"
                     r"is lost", stderr, re.MULTILINE), stderr
    assert "Exception raised from" not in stderr
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids.values())
    assert_checkpoint_loads_at(tmp_path, 1)


def test_ctrl_c_of_the_launcher_stops_every_rank_and_saves(one_process, tmp_path):
    reference, _ = one_process
    launcher = start_and_wait_for(tmp_path, "epoch 2/2  step 3/16")
    pids = rank_pids(launcher)
    launcher.send_signal(signal.SIGINT)
    stdout, stderr = launcher.communicate(timeout=60)
    assert launcher.returncode == 130, stderr
    assert "interrupted: checkpoint saved" in stdout and stderr == ""
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids.values())
    saved = assert_checkpoint_loads_at(tmp_path, 1)
    assert 3 <= saved.step_in_epoch < 16
    # The interrupted run continues (with 3 ranks) to the one-process result.
    checked(*train_args(tmp_path, "--nproc", "3", "--resume"))
    assert_parameters_close(checkpoint_tensors(tmp_path / "checkpoint.pt"),
                            checkpoint_tensors(reference / "checkpoint.pt"),
                            global_attention_stages(reference / "checkpoint.pt"))


def is_running(pid):
    """Whether process `pid` exists and is not a zombie (an orphan waits for init to reap it)."""
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_kill_9_of_the_launcher_takes_every_rank_with_it(tmp_path):
    launcher = start_and_wait_for(tmp_path, "epoch 2/2  step 3/16")
    pids = rank_pids(launcher)
    assert len(pids) == 2 and all(is_running(pid) for pid in pids.values())
    launcher.kill()
    launcher.wait(timeout=60)  # (the ranks hold its output pipes: they close when the ranks end)
    deadline = time.monotonic() + 10
    try:
        while any(is_running(pid) for pid in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(is_running(pid) for pid in pids.values()), pids
    finally:
        for pid in filter(is_running, pids.values()):
            os.kill(pid, signal.SIGKILL)
        launcher.stdout.close()
        launcher.stderr.close()
    assert_checkpoint_loads_at(tmp_path, 1)


@pytest.fixture
def finished_run(one_process, tmp_path):
    """A copy of a finished run and its checkpoint's digest: a failed resume must leave it whole."""
    out = tmp_path / "run"
    out.mkdir()
    checkpoint = out / "checkpoint.pt"
    checkpoint.write_bytes((one_process[0] / "checkpoint.pt").read_bytes())
    return out, digest(checkpoint)


def as_rank(rank, world_size, port, *args, timeout="3"):
    environment = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))
    return subprocess.run([str(BIN), *args, "--timeout", timeout], capture_output=True, text=True, timeout=120,
                          env=environment)


def test_a_port_in_use_is_reported(finished_run):
    out, before = finished_run
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        launched = run(*train_args(out, "--nproc", "2", "--master-port", port, "--resume"))
        assert launched.returncode == 1
        assert launched.stderr == (f"slideformer: error: slideformer::distributed::launch_local: cannot listen on "
                                   f"127.0.0.1:{port} for the rendezvous: Address already in use (choose another "
                                   f"port, or 0 for a free one)\n")
        hosted = as_rank(0, 2, port, *train_args(out, "--resume"))
        assert hosted.returncode == 1
        assert (f"slideformer: error: slideformer::distributed: rank 0 cannot host the rendezvous store at "
                f"127.0.0.1:{port} (is the port in use? choose another MASTER_PORT)") in hosted.stderr
    assert digest(out / "checkpoint.pt") == before


def test_a_rank_that_never_arrives_times_out(finished_run):
    out, before = finished_run
    started = time.monotonic()
    alone = as_rank(0, 3, free_port(), *train_args(out, "--resume"))
    assert time.monotonic() - started < 30
    assert alone.returncode == 1
    assert "timed out after 3 s: ranks 1, 2 of 3 never arrived" in alone.stderr, alone.stderr
    no_host = as_rank(1, 2, free_port(), *train_args(out, "--resume"))
    assert no_host.returncode == 1
    assert "rank 1 could not reach the rendezvous store at 127.0.0.1:" in no_host.stderr
    assert "rank 0 never arrived" in no_host.stderr
    assert digest(out / "checkpoint.pt") == before


def test_a_rank_that_cannot_start_stops_them_all(tmp_path):
    result = run(*train_args(tmp_path / "out", "--nproc", "2", "--data", tmp_path / "nowhere", "--timeout", "20"))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    # Rank 0 reports the problem once; rank 1 says why it stops; the launcher reports both ranks.
    assert [line for line in lines if "nowhere" in line] == [
        f"slideformer: error: {tmp_path}/nowhere/train-images-idx3-ubyte.gz: cannot open the file"], result.stderr
    assert "slideformer: error: rank 1: stopping: rank 0 could not start the run" in lines
    assert result.stdout == ""


def test_nproc_must_agree_with_the_launcher():
    result = as_rank(0, 2, free_port(), "train", *ARGS, "--nproc", "3", "--out", "unused")
    assert result.returncode == 1
    assert result.stderr == ("slideformer: error: --nproc 3 disagrees with WORLD_SIZE=2 set by the launcher "
                             "(under a launcher, leave --nproc out)\n")


@pytest.mark.parametrize("option,value,expected", [
    ("--nproc", "0", "an integer in [1, 1024]"),
    ("--master-port", "70000", "an integer in [0, 65535]"),
    ("--timeout", "0", "an integer in [1, 86400]"),
    ("--bucket-kb", "0", "an integer in [1, 1073741824]"),
])
def test_bad_values_of_the_options(tmp_path, option, value, expected):
    result = run("train", "--out", tmp_path, option, value)
    assert result.returncode > 100
    assert result.stderr == f"slideformer: error: {option}: must be {expected}, got '{value}' (see --help)\n"
    assert list(tmp_path.iterdir()) == []
