"""Build of lightcache: pure-Python packages plus the compiled ring buffer ``lightcache._C``.

``lightcache._C`` is built by CMake (CMakeLists.txt) with Ninja and pybind11. It never links
libtorch, so torch is not a build requirement and one build loads under any torch version.

CUDA: the CUDA copy engine is compiled in whenever ``nvcc`` is found (PATH, $CUDACXX, $CUDA_HOME,
/usr/local/cuda). ``LIGHTCACHE_CUDA=1`` makes CUDA mandatory (a failed CUDA build is an error),
``LIGHTCACHE_CUDA=0`` skips it. Without the variable a failed CUDA build warns and falls back to a
CPU-only module (``_C.cuda_compiled`` is False and ``_C.build_note`` says why).
Other knobs: ``LIGHTCACHE_CUDA_ARCHS`` (CMake CUDA_ARCHITECTURES list), ``CMAKE_BUILD_PARALLEL_LEVEL``,
``LIGHTCACHE_BUILD_TYPE`` (default Release).
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

from setuptools import find_packages, Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


def _cuda_request():
    """True (forced on), False (forced off) or None (auto) from LIGHTCACHE_CUDA."""
    raw = os.environ.get("LIGHTCACHE_CUDA", "").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw in ("1", "on", "true", "yes"):
        return True
    if raw in ("0", "off", "false", "no"):
        return False
    raise RuntimeError(f"LIGHTCACHE_CUDA must be 0, 1 or auto, got {raw!r}")


def _find_nvcc():
    candidates = [os.environ.get("CUDACXX"), shutil.which("nvcc")]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.realpath(c)
    return None


def _tool(name, module, attr):
    """The executable of a pip-installed build tool (cmake/ninja wheels), else the one on PATH."""
    try:
        mod = __import__(module)
        path = os.path.join(getattr(mod, attr), name)
        if os.path.isfile(path):
            return path
    except (ImportError, AttributeError):
        pass
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"lightcache: building lightcache._C needs {name} (pip install {module})")
    return found


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        request = _cuda_request()
        nvcc = _find_nvcc() if request is not False else None
        if request is True and nvcc is None:
            raise RuntimeError("LIGHTCACHE_CUDA=1 but nvcc was not found (PATH, CUDACXX, CUDA_HOME, /usr/local/cuda)")
        if nvcc is not None:
            try:
                self._cmake(target, nvcc, note="")
                return
            except subprocess.CalledProcessError as exc:
                if request is True:
                    raise RuntimeError(f"LIGHTCACHE_CUDA=1: the CUDA build of lightcache._C failed ({exc})") from exc
                msg = (
                    f"lightcache: the CUDA build of lightcache._C failed ({exc}); building the CPU-only ring buffer "
                    "instead. Set LIGHTCACHE_CUDA=1 to make this an error or LIGHTCACHE_CUDA=0 to skip CUDA."
                )
                warnings.warn(msg, stacklevel=1)
                print(f"WARNING: {msg}", file=sys.stderr)
                self._cmake(target, None, note="CUDA build failed at install time - CPU-only module")
                return
        note = "built with LIGHTCACHE_CUDA=0" if request is False else "nvcc not found at build time"
        self._cmake(target, None, note=note)

    def _cmake(self, target: Path, nvcc, note: str):
        import pybind11

        cmake = _tool("cmake", "cmake", "CMAKE_BIN_DIR")
        ninja = _tool("ninja", "ninja", "BIN_DIR")
        build_dir = Path(self.build_temp).resolve() / ("cmake-cuda" if nvcc else "cmake-cpu")
        if build_dir.exists():
            shutil.rmtree(build_dir)  # a stale cache (other Python, other nvcc) would be reused silently
        build_dir.mkdir(parents=True)
        args = [
            cmake,
            "-S",
            str(ROOT),
            "-B",
            str(build_dir),
            "-G",
            "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={ninja}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('LIGHTCACHE_BUILD_TYPE', 'Release')}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DLIGHTCACHE_BUILD_TESTS=OFF",
            "-DLIGHTCACHE_BUILD_PYTHON=ON",
            f"-DLIGHTCACHE_OUTPUT_DIR={target.parent}",
            f"-DLIGHTCACHE_EXT_SUFFIX={sysconfig.get_config_var('EXT_SUFFIX')}",
            f"-DLIGHTCACHE_BUILD_NOTE={note}",
        ]
        if nvcc:
            args += ["-DLIGHTCACHE_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={nvcc}"]
            if os.environ.get("LIGHTCACHE_CUDA_ARCHS"):
                args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['LIGHTCACHE_CUDA_ARCHS']}")
        else:
            args.append("-DLIGHTCACHE_CUDA=OFF")
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(min(2, os.cpu_count() or 1))
        subprocess.run(args, check=True)
        subprocess.run([cmake, "--build", str(build_dir), "--target", "_C", "-j", jobs], check=True)
        if not target.exists():
            raise RuntimeError(f"lightcache: CMake did not produce {target}")


# kernels/ (Triton) is installed as the subpackage lightcache.kernels.
setup(
    # every lightcache subpackage, plus kernels/ (Triton) installed as lightcache.kernels
    packages=find_packages(include=["lightcache", "lightcache.*"]) + ["lightcache.kernels"],
    package_dir={"lightcache.kernels": "kernels"},
    # trained proxy pipelines (benchmarks/proxy/train_all.py): configs + safetensors, ~15 MB in all
    package_data={"lightcache.proxy": ["weights/*/*.json", "weights/*/*/*.json", "weights/*/*/*.safetensors"]},
    ext_modules=[CMakeExtension("lightcache._C")],
    cmdclass={"build_ext": CMakeBuild},
)
