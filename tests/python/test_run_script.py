"""The ./run script: help text, reconfiguration, the test summary and the benchmark list.

Nothing here builds: the script is sourced for its functions, or run with a stand-in `cmake`.
"""
import os
import pathlib
import shutil
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
RUN = ROOT / "run"
BASH = shutil.which("bash")


def bash(script, env=None, cwd=ROOT):
    result = subprocess.run([BASH, "-c", script], capture_output=True, text=True, env=env, cwd=cwd,
                            timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def sourced(snippet, env=None):
    """Runs bash code after sourcing ./run (which then defines its functions and runs nothing)."""
    return bash(f'source "{RUN}"\n{snippet}', env=env)


def test_help_prints_the_comment_block_and_nothing_after_it():
    lines = RUN.read_text().splitlines()
    block = []
    for line in lines[1:]:
        if not line.startswith("#"):
            break
        block.append(line[2:] if line.startswith("# ") else line[1:])
    out = subprocess.run([str(RUN), "help"], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == block
    assert "set -euo pipefail" not in out and "SLIDEFORMER_JOBS" in out


def test_sourcing_defines_functions_without_running_a_command():
    assert sourced("type -t summarize; type -t configure_and_build").split() == ["function", "function"]


def tool_path(tmp_path, tools):
    """A PATH holding only `tools` (no bc: the summary must not need it)."""
    bin_dir = tmp_path / "tools"
    bin_dir.mkdir()
    for tool in tools:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return str(bin_dir)


def summary(tmp_path, ctest_text, pytest_text):
    ctest_log, pytest_log = tmp_path / "ctest.log", tmp_path / "pytest.log"
    ctest_log.write_text(ctest_text)
    pytest_log.write_text(pytest_text)
    env = {"PATH": tool_path(tmp_path, ["grep", "tail", "cat", "dirname"]), "HOME": str(tmp_path)}
    return sourced(f'summarize "{ctest_log}" "{pytest_log}"', env=env).splitlines()


CTEST_OK = "Test #1: a ....   Passed\n100% tests passed, 0 tests failed out of 12\n"


def test_summary_adds_pytest_failures_and_errors_without_bc(tmp_path):
    pytest_text = "....F.E\nFAILED x\n2 failed, 140 passed, 3 skipped, 1 warning, 1 error in 61.20s (0:01:01)\n"
    ctest_text = "2 - b (Failed)\n***Skipped\n83% tests passed, 2 tests failed out of 12\n"
    lines = summary(tmp_path, ctest_text, pytest_text)
    assert lines[-3:] == ["ctest:  9 passed, 2 failed, 1 skipped",
                          "pytest: 140 passed, 3 failed, 3 skipped",
                          "total: 149 passed, 5 failed, 4 skipped"]


def test_summary_counts_a_missing_pytest_summary_as_a_failure(tmp_path):
    crashed = "....\nFatal Python error: Segmentation fault\n\nThread 0x1 (most recent call first):\n"
    lines = summary(tmp_path, CTEST_OK, crashed)
    assert any(line.startswith("pytest: no summary line") for line in lines)
    assert lines[-2:] == ["pytest: 0 passed, 1 failed, 0 skipped", "total: 12 passed, 1 failed, 0 skipped"]


def test_summary_counts_a_missing_ctest_summary_as_a_failure(tmp_path):
    lines = summary(tmp_path, "Test #1: a ...Child aborted\n", "7 passed in 1.00s\n")
    assert lines[-3:] == ["ctest:  0 passed, 1 failed, 0 skipped", "pytest: 7 passed, 0 failed, 0 skipped",
                          "total: 7 passed, 1 failed, 0 skipped"]


def stand_ins(tmp_path):
    """A `cmake` that logs each call (configure writes build.ninja, --build does nothing) and a
    `python` that answers ./run's torch checks at once."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    (bin_dir / "cmake").write_text(
        '#!/usr/bin/env bash\necho "$*" >>"$CMAKE_CALLS"\n'
        '[ "$1" = --build ] && exit 0\n'
        'while [ $# -gt 0 ]; do [ "$1" = -B ] && touch "$2/build.ninja"; shift; done\n')
    (bin_dir / "python").write_text("#!/usr/bin/env bash\necho /torch/share/cmake\n")
    for tool in ("cmake", "python"):
        (bin_dir / tool).chmod(0o755)
    return bin_dir


def test_a_changed_configure_argument_reconfigures(tmp_path):
    calls = tmp_path / "calls.log"
    fakes = stand_ins(tmp_path)
    env = dict(os.environ, PATH=f"{fakes}:{os.environ['PATH']}", CMAKE_CALLS=str(calls),
               SLIDEFORMER_BUILD=str(tmp_path / "build"), SLIDEFORMER_PYTHON=str(fakes / "python"))

    def build(**extra):
        subprocess.run([str(RUN), "build"], env=dict(env, **extra), check=True, capture_output=True,
                       timeout=120)
        configures = [line for line in calls.read_text().splitlines() if " -S " in line]
        return configures

    assert [c.count("-DSLIDEFORMER_CUDA=OFF") for c in build(SLIDEFORMER_CUDA="OFF")] == [1]
    assert len(build(SLIDEFORMER_CUDA="OFF")) == 1  # same arguments: no second configure
    configures = build(SLIDEFORMER_CUDA="ON")
    assert len(configures) == 2 and "-DSLIDEFORMER_CUDA=ON" in configures[1]
    assert len(build(SLIDEFORMER_CUDA="ON")) == 2
    assert calls.read_text().count("--build") == 4


def test_sanitize_and_fuzz_refuse_unknown_arguments():
    for args, message in ((["sanitize", "memory"], "unknown sanitizer 'memory' (address or thread)"),
                          (["fuzz", "10s"], "fuzz: seconds must be a whole number, got '10s'")):
        result = subprocess.run([str(RUN), *args], capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and message in result.stderr


def test_sanitize_thread_builds_its_own_tree_without_openmp(tmp_path):
    calls = tmp_path / "calls.log"
    fakes = stand_ins(tmp_path)
    env = dict(os.environ, PATH=f"{fakes}:{os.environ['PATH']}", CMAKE_CALLS=str(calls),
               SLIDEFORMER_BUILD=str(tmp_path / "build"), SLIDEFORMER_PYTHON=str(fakes / "python"))
    subprocess.run([str(RUN), "sanitize", "thread"], env=env, capture_output=True, timeout=120)
    configure, build = calls.read_text().splitlines()
    assert f"-B {tmp_path}/build-tsan " in configure
    for argument in ("-DCMAKE_CXX_FLAGS=-fsanitize=thread", "-DSLIDEFORMER_OPENMP=OFF", "-DSLIDEFORMER_CUDA=OFF"):
        assert argument in configure.split()
    assert build.startswith(f"--build {tmp_path}/build-tsan") and build.endswith(" slideformer_tests")


def test_the_apt_list_has_no_unused_packages():
    apt = sourced('printf "%s\\n" "${APT_PACKAGES[@]}"').split()
    assert "libbenchmark-dev" not in apt and "libgmock-dev" not in apt
    sources = "".join(p.read_text() for d in ("csrc", "tests", "benchmarks", "apps")
                      for p in (ROOT / d).rglob("*") if p.suffix in (".cpp", ".h", ".cu", ".txt"))
    assert "gmock" not in sources.replace("BUILD_GMOCK OFF", "") and "benchmark/benchmark.h" not in sources


def test_every_listed_benchmark_exists_and_every_cpu_benchmark_is_listed():
    listed = sourced('printf "%s\\n" "${BENCHMARKS[@]}"').split()
    assert listed
    for name in listed:
        source = ROOT / "benchmarks" / (name if name.endswith(".py") else name + ".cpp")
        assert source.exists(), f"./run bench lists {name}, but {source} does not exist"
    gpu_check = (ROOT / "tests" / "gpu_check.sh").read_text()
    for source in (ROOT / "benchmarks").glob("bench_*"):
        if source.suffix in (".cpp", ".py"):
            name = source.stem if source.suffix == ".cpp" else source.name
            assert name in listed or name in gpu_check, f"{source.name} is run by neither bench nor gpu-check"
