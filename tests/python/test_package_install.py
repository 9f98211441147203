"""`pip install` of the repository into a fresh virtual environment, then the package's tests
against the installed package.

The fresh venv sees torch (and pip, scikit-build-core, pytest) through a .pth file naming this
interpreter's site-packages, so nothing is downloaded: pip runs with --no-build-isolation and
--no-index. The CMake build goes to build-pip-test/ next to the main build directory, with the
main build's CUDA and CPU-ISA settings: its compile commands are the main build's, so ccache
serves every object and the install costs a configure and a link.
"""
import os
import pathlib
import re
import subprocess
import sys
import sysconfig

from conftest import INSTALLED, LIBRARY, ROOT
import pytest

pytestmark = pytest.mark.skipif(INSTALLED, reason="installs the package itself")


def main_build_settings():
    """-C cmake.define.X=Y for the main build's settings that change compile commands."""
    cache = (LIBRARY.parent.parent / "CMakeCache.txt").read_text()
    settings = []
    for name in ("CMAKE_CXX_COMPILER", "SLIDEFORMER_CUDA", "SLIDEFORMER_CPU_ISA", "CMAKE_CUDA_COMPILER",
                 "CUDAToolkit_ROOT"):
        match = re.search(rf"^{name}:[A-Z]+=(.*)$", cache, re.MULTILINE)
        if match and match.group(1) and not match.group(1).endswith("NOTFOUND"):
            settings.append(f"-Ccmake.define.{name}={match.group(1)}")
    return settings


def run(args, **kwargs):
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, f"{args}\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return result.stdout


def test_pip_install_into_a_fresh_venv_then_the_package_tests_pass(tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = pathlib.Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    (site / "shared_torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("SLIDEFORMER_LIBRARY", "PYTHONPATH")}

    run([str(python), "-m", "pip", "install", "--no-build-isolation", "--no-index", "-q",
         f"-Cbuild-dir={ROOT / 'build-pip-test'}", *main_build_settings(), str(ROOT)], env=env, cwd=tmp_path)

    out = run([str(python), "-c", "import slideformer; print(slideformer.library_path)"], env=env, cwd=tmp_path)
    assert out.strip() == str(site / "slideformer" / "lib" / "libslideformer.so")
    tests = ROOT / "tests" / "python"
    run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests / "test_package.py")],
        env=dict(env, SLIDEFORMER_TEST_INSTALLED="1"), cwd=tmp_path)
