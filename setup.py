"""Build dgnet and its compiled extension ``dgnet._C``.

C++ CPU kernels are always built. CUDA kernels are built when torch is a CUDA
build and nvcc can be found (``DGNET_BUILD_CUDA=auto``, the default), always
with ``DGNET_BUILD_CUDA=1`` (fails loudly if impossible) and never with ``0``.
No GPU is needed at build time: CI compiles the CUDA code on a machine without one.

CUDA is located as: ``CUDA_HOME`` if set, else ``/usr/local/cuda`` if it exists,
else the real location of ``nvcc`` (resolved through wrapper scripts). torch's
own guess is not used because on some machines it points at ``/usr/local``.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _nvcc_toolkit_root(nvcc: str) -> Path | None:
    """The toolkit root behind an nvcc path, seeing through wrapper scripts."""
    real = Path(os.path.realpath(nvcc))
    if (real.parent.parent / "include" / "cuda_runtime.h").exists():
        return real.parent.parent
    # A wrapper script: ask nvcc itself where its tree is (it prints TOP=... in dry-run mode).
    try:
        out = subprocess.run(
            [nvcc, "-dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"TOP=(\S+)", out.stdout + out.stderr)
    return Path(match.group(1)).resolve() if match else None


def find_cuda_home() -> Path | None:
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env:
        return Path(env)
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return Path("/usr/local/cuda")
    nvcc = shutil.which("nvcc")
    return _nvcc_toolkit_root(nvcc) if nvcc else None


def want_cuda(torch_cuda: str | None, cuda_home: Path | None) -> bool:
    mode = os.environ.get("DGNET_BUILD_CUDA", "auto").lower()
    if mode not in {"0", "1", "auto"}:
        raise SystemExit(f"DGNET_BUILD_CUDA={mode!r}: expected 0, 1 or auto")
    available = torch_cuda is not None and cuda_home is not None and (cuda_home / "bin" / "nvcc").exists()
    if mode == "1" and not available:
        raise SystemExit(
            f"DGNET_BUILD_CUDA=1 but CUDA is unavailable (torch.version.cuda={torch_cuda}, CUDA_HOME={cuda_home})"
        )
    return mode == "1" or (mode == "auto" and available)


def read_version() -> str:
    """The one version of dgnet, ``__version__`` in dgnet/__init__.py (CMakeLists.txt reads it too)."""
    text = (ROOT / "dgnet" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"$', text, re.M).group(1)


def read_requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def cuda_library_headers(cuda_home: Path) -> list[str]:
    """Headers of CUDA libraries that torch's CUDA headers include (cuSPARSE, cuBLAS) when the
    toolkit lacks them: a compiler-only toolkit plus torch's pip-installed nvidia-* wheels."""
    if (cuda_home / "include" / "cusparse.h").exists():
        return []
    try:
        import nvidia
    except ImportError:
        return []
    found = [str(p.parent) for base in nvidia.__path__ for p in Path(base).glob("*/include/cusparse.h")]
    return found[:1]


def cpu_flags() -> list[str]:
    flags = ["-O3", "-fopenmp"]  # the C++ standard is torch's choice (C++20 for torch 2.14)
    # Vectorise for the machine we build on when it has AVX2+FMA (pip install -e builds where it runs).
    if platform.machine() == "x86_64" and os.environ.get("DGNET_NATIVE_ISA", "1") == "1":
        cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        if re.search(r"\bavx2\b", cpuinfo) and re.search(r"\bfma\b", cpuinfo):
            flags.append("-march=x86-64-v3")
    return flags


def extensions():
    cuda_home = find_cuda_home()
    if cuda_home is not None:
        # torch.utils.cpp_extension reads CUDA_HOME once, at import time.
        os.environ["CUDA_HOME"] = str(cuda_home)
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    with_cuda = want_cuda(torch.version.cuda, cuda_home)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

    csrc = Path("csrc")
    sources = sorted(str(p) for p in [*csrc.glob("*.cpp"), *(csrc / "cpu").glob("*.cpp")])
    include_dirs = [str(ROOT / "csrc" / "include")]
    define_macros = [("Py_LIMITED_API", "0x030b0000")]
    extra = {"cxx": cpu_flags()}
    if with_cuda:
        sources += sorted(str(p) for p in (csrc / "cuda").glob("*.cu"))
        define_macros.append(("DGNET_WITH_CUDA", "1"))
        extra["nvcc"] = ["-O3", "--use_fast_math", "--expt-relaxed-constexpr"]
        include_dirs += cuda_library_headers(cuda_home)
        ext_cls = CUDAExtension
    else:
        ext_cls = CppExtension
    print(f"dgnet: building dgnet._C with{'' if with_cuda else 'out'} CUDA "
          f"(CUDA_HOME={cuda_home}, torch CUDA {torch.version.cuda}, "
          f"arch list {os.environ['TORCH_CUDA_ARCH_LIST'] if with_cuda else '-'})")
    ext = ext_cls(
        "dgnet._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()

setup(
    name="dgnet",
    version=read_version(),
    description="DG-Net person re-identification: joint discriminative and generative learning, fast.",
    python_requires=">=3.11",  # the extension is built against the CPython 3.11 limited API (cp311 abi3)
    packages=["dgnet", "dgnet.ops", "dgnet.data", "dgnet.data.check", "dgnet.data.synthetic", "dgnet.models",
              "dgnet.training", "dgnet.evaluation", "dgnet.checkpoints", "dgnet.inference", "dgnet.generative",
              "dgnet.kernels"],
    package_dir={"dgnet.kernels": "kernels"},
    install_requires=read_requirements(),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
