"""`slideformer train` on two hosts: two network namespaces stand for two machines, joined by a veth
pair whose addresses exist only inside them (no traffic leaves the pair, nothing else can reach
them). Rank 0, which hosts the rendezvous store, runs in one, rank 1 in the other, started as a
launcher on each machine would start them (RANK, WORLD_SIZE, MASTER_ADDR = rank 0's address on the
link, GLOO_SOCKET_IFNAME = the host's end of it). They train as one process does; cutting the link
mid-epoch makes both exit within --timeout, each naming the peer it lost. Making namespaces needs
CAP_NET_ADMIN (root) and iproute2's `ip`: without them the tests are skipped with the reason."""
import os
import re
import shutil
import subprocess
import time

import pytest

from test_cli import BIN
from test_train_nproc import assert_same_training, one_process, train_args  # noqa: F401 (a fixture)

SUBNET = "10.213.{}.{}"  # a /30 per test process (by its pid), assigned only inside the two namespaces
TIMEOUT = 20  # --timeout of the cut-link test, seconds


def ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


class TwoHosts:
    """Namespaces `<prefix>a` and `<prefix>b`, one end of a veth pair in each, `address[i]` on host i."""

    def __init__(self):
        prefix = f"sf{os.getpid() % 100000}"
        self.hosts = (prefix + "a", prefix + "b")
        self.links = (prefix + "va", prefix + "vb")
        net = os.getpid() % 16384
        self.address = tuple(SUBNET.format(net // 64, net % 64 * 4 + host) for host in (1, 2))

    def make(self):
        """None, or why the namespaces could not be made."""
        if shutil.which("ip") is None:
            return "iproute2's `ip` is not installed"
        for host in self.hosts:
            made = ip("netns", "add", host)
            if made.returncode != 0:
                return f"cannot make a network namespace (`ip netns add`: {made.stderr.strip()})"
        steps = [("link", "add", self.links[0], "netns", self.hosts[0], "type", "veth", "peer", "name", self.links[1],
                  "netns", self.hosts[1])]
        for host, link, address in zip(self.hosts, self.links, self.address):
            steps += [("-n", host, "addr", "add", address + "/30", "dev", link), ("-n", host, "link", "set", link, "up"),
                      ("-n", host, "link", "set", "lo", "up")]
        for step in steps:
            done = ip(*step)
            if done.returncode != 0:
                return f"cannot link the namespaces (`ip {' '.join(step)}`: {done.stderr.strip()})"
        return None

    def remove(self):
        for host in self.hosts:
            ip("netns", "del", host)  # takes its end of the pair, and so the pair, with it

    def start_rank(self, rank, port, *args):
        """Rank `rank` of 2 on host `rank`: a Popen with text stdout and stderr pipes."""
        environment = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR=self.address[0],
                           MASTER_PORT=str(port), GLOO_SOCKET_IFNAME=self.links[rank])
        return subprocess.Popen(["ip", "netns", "exec", self.hosts[rank], str(BIN), *map(str, args)],
                                env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def cut(self):
        done = ip("-n", self.hosts[0], "link", "set", self.links[0], "down")
        assert done.returncode == 0, done.stderr


@pytest.fixture
def two_hosts():
    hosts = TwoHosts()
    why_not = hosts.make() if os.geteuid() == 0 else "not root: making network namespaces needs CAP_NET_ADMIN"
    if why_not is not None:
        hosts.remove()
        pytest.skip(f"two hosts: {why_not}")
    try:
        yield hosts
    finally:
        hosts.remove()


def finish(ranks, timeout):
    """(returncode, stdout, stderr) of each rank; kills the ones still running after `timeout` s."""
    results = []
    for rank in ranks:
        try:
            stdout, stderr = rank.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            rank.kill()
            stdout, stderr = rank.communicate()
        results.append((rank.returncode, stdout, stderr))
    return results


def test_two_hosts_train_as_one(two_hosts, one_process, tmp_path):
    """Both ranks write to one --out (as a shared directory on two machines); rank 0 alone saves."""
    reference, reference_stdout = one_process
    ranks = [two_hosts.start_rank(rank, 29500, *train_args(tmp_path)) for rank in (0, 1)]
    (code0, stdout, stderr0), (code1, _, stderr1) = finish(ranks, 600)
    assert (code0, code1) == (0, 0), stderr0 + stderr1
    assert "2 processes x 1 threads" in stdout
    assert_same_training(tmp_path, reference, stdout, reference_stdout, tmp_path)


def test_a_cut_link_stops_both_hosts_within_the_timeout(two_hosts, tmp_path):
    ranks = [two_hosts.start_rank(rank, 29500, *train_args(tmp_path, "--timeout", TIMEOUT)) for rank in (0, 1)]
    for line in ranks[0].stdout:
        if line.startswith("epoch 2/2  step 3/16"):
            break
    else:
        finish(ranks, 1)
        pytest.fail("rank 0 ended before the second epoch")
    two_hosts.cut()
    cut = time.monotonic()
    exited = []
    for rank in ranks:
        try:
            rank.wait(timeout=3 * TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        exited.append(time.monotonic() - cut)
    (code0, _, stderr0), (code1, _, stderr1) = finish(ranks, 1)
    assert (code0, code1) == (1, 1), stderr0 + stderr1
    # Each names the other in one line: rank 0 its lost peer (its heartbeats stopped), rank 1 the
    # store it cannot reach any more.
    assert re.search(r"^slideformer: error: .*rank 0: .* failed: rank 1 (\(pid \d+ on [^)]*\) )?is lost", stderr0,
                     re.MULTILINE), stderr0
    assert re.search(r"^slideformer: error: .*rank 1: .* failed: rank 0 (\(pid \d+ on [^)]*\) )?is lost", stderr1,
                     re.MULTILINE), stderr1
    assert "Exception raised from" not in stderr0 + stderr1
    # Within the timeout: the collective waits --timeout, then the lost-rank check takes ~3 heartbeats.
    assert max(exited) < TIMEOUT + 10, exited
