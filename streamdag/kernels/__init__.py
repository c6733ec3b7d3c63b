"""CUDA C++ kernels (``*.cu``, ``*.cuh`` in this folder) and their loader.

Design note. Any ``*.cu`` file here is a compilation unit of ``extern "C"`` kernels; headers
(``*.cuh``) are found through the include path. :func:`compile_cubin` turns a file into a
cubin with NVRTC (through :mod:`streamdag.driver`, no GPU needed) and caches it on disk,
keyed by the SHA-256 of the file, every local header it includes (recursively), the
options, the architecture and the cuda.core version. :func:`load` returns a loaded module
on a :class:`~streamdag.driver.Gpu`. :func:`signatures` reads each kernel's parameter types
from the source (pure Python), so a task can declare and check its arguments; kernels made
by ``STREAMDAG_GROUPED(name)`` (see ``grouped.cuh``) are listed as ``name_grouped``.

The cache lives in ``$XDG_CACHE_HOME/streamdag/kernels`` (``~/.cache/...`` by default) or
where ``cache_dir=`` says; writes are atomic (temp file + rename), so concurrent compiles
of the same key are harmless.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamdag.errors import CompileError

__all__ = [
    "KERNEL_DIR",
    "cache_key",
    "compile_cubin",
    "default_cache_dir",
    "load",
    "signatures",
    "sources",
]

KERNEL_DIR = Path(__file__).resolve().parent
DEFAULT_ARCH = "sm_90"
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)
_KERNEL = re.compile(
    r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)')
_GROUPED = re.compile(r"^\s*STREAMDAG_GROUPED\((\w+)\)", re.MULTILINE)
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)


def sources() -> list[str]:
    """The ``*.cu`` files of this folder (sorted names)."""
    return sorted(p.name for p in KERNEL_DIR.glob("*.cu"))


def _read(file: str) -> str:
    path = KERNEL_DIR / file
    if not path.is_file():
        raise CompileError(f"no kernel source {file!r} in {KERNEL_DIR}")
    return path.read_text()


def _closure(file: str) -> list[tuple[str, str]]:
    """(name, text) of ``file`` and every local header it includes, recursively, sorted."""
    seen: dict[str, str] = {}
    todo = [file]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = _read(name)
        todo += [inc for inc in _INCLUDE.findall(seen[name]) if (KERNEL_DIR / inc).is_file()]
    return sorted(seen.items())


def _param_type(param: str) -> str:
    """``"const float* __restrict__ x"`` -> ``"const float*"``; ``"int n"`` -> ``"int"``."""
    p = " ".join(param.replace("__restrict__", " ").replace("*", " * ").split())
    if "*" in p:
        return " ".join(p[: p.rindex("*")].split()).replace(" *", "*") + "*"
    words = p.split()
    return " ".join(words[:-1]) if len(words) > 1 else p  # drop the parameter name


_DEFINE = re.compile(r"^\s*#\s*define\s+(\w+)", re.MULTILINE)
_DIRECTIVE = re.compile(r"^\s*#\s*(ifndef|ifdef|if|else|elif|endif)\b\s*(\w*)")


def _without_excluded(text: str, defined: frozenset[str]) -> str:
    """``text`` without its ``#ifndef NAME`` blocks for a ``NAME`` in ``defined`` (to their
    ``#else`` or ``#endif``, nested conditionals included): what a build that defines them
    leaves out. Other conditionals are kept whole."""
    out: list[str] = []
    skip_depth = 0  # > 0: inside an excluded block, at this nesting depth
    depth = 0
    for line in text.split("\n"):
        m = _DIRECTIVE.match(line)
        kind, name = (m.group(1), m.group(2)) if m else ("", "")
        if kind in ("ifndef", "ifdef", "if"):
            depth += 1
            if not skip_depth and kind == "ifndef" and name in defined:
                skip_depth = depth
                continue
        elif kind in ("else", "elif") and skip_depth == depth:
            skip_depth = 0
            continue
        elif kind == "endif":
            depth -= 1
            if skip_depth == depth + 1:
                skip_depth = 0
                continue
        if not skip_depth:
            out.append(line)
    return "\n".join(out)


@functools.cache
def signatures(file: str, defined: frozenset[str] = frozenset()) -> dict[str, tuple[str, ...]]:
    """Parameter types of each ``extern "C"`` kernel in ``file``.

    Example: ``signatures("scheduler.cu")["saxpy"] == ("float", "const float*", "float*",
    "unsigned int")``. Pointer types are normalised to ``"T*"``; names are dropped. A file
    that defines macros and includes another ``*.cu`` (a build of it: ``network64.cu``)
    lists that file's kernels, less the ``#ifndef`` blocks of the macros it defined.
    """
    text = _without_excluded(_COMMENT.sub("", _read(file)), defined)
    defined = defined | frozenset(_DEFINE.findall(text))
    out: dict[str, tuple[str, ...]] = {}
    for inc in _INCLUDE.findall(text):
        if inc.endswith(".cu"):
            out.update(signatures(inc, defined))
    for name, params in _KERNEL.findall(text):
        ps = [p.strip() for p in params.split(",") if p.strip() and p.strip() != "void"]
        out[name] = tuple(_param_type(p) for p in ps)
    for name in _GROUPED.findall(text):
        out[f"{name}_grouped"] = (f"const {name}_args*", "unsigned int")
    return out


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/streamdag/kernels``, else ``~/.cache/streamdag/kernels``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamdag" / "kernels"


def cache_key(file: str, *, arch: str, std: str = "c++17", defines: Sequence[str] = ()) -> str:
    """SHA-256 over the sources (with headers), options, arch and cuda.core's version."""
    h = hashlib.sha256()
    for name, text in _closure(file):
        h.update(f"{name}\0{len(text)}\0".encode())
        h.update(text.encode())
    try:
        from importlib.metadata import version

        core = version("cuda-core")
    except Exception:  # metadata missing: the key still covers everything else
        core = "?"
    h.update(f"\0{arch}\0{std}\0{','.join(defines)}\0{core}".encode())
    return h.hexdigest()


def compile_cubin(
    file: str,
    *,
    arch: str = DEFAULT_ARCH,
    std: str = "c++17",
    defines: Sequence[str] = (),
    cache_dir: Path | str | None = None,
    use_cache: bool = True,
) -> bytes:
    """The cubin of kernel file ``file`` for ``arch``, compiled with NVRTC or from the cache.

    Raises:
        CompileError: NVRTC rejected the source (``.log`` holds its log), or no such file.
    """
    from streamdag import driver

    key = cache_key(file, arch=arch, std=std, defines=defines)
    path = Path(cache_dir or default_cache_dir()) / f"{Path(file).stem}-{arch}-{key[:32]}.cubin"
    if use_cache and path.is_file():
        return path.read_bytes()
    cubin = driver.compile_cubin(
        _read(file), arch=arch, name=file, include_dirs=[str(KERNEL_DIR)], std=std,
        defines=defines,
    )
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(cubin)
            os.replace(tmp, path)
        except OSError:  # a read-only cache is not an error: we have the cubin
            pass
    return cubin


def load(file: str, gpu: Any, **options: Any) -> Any:
    """Compile (or fetch from the cache) ``file`` for ``gpu``'s arch and load it there."""
    return gpu.load_cubin(compile_cubin(file, arch=gpu.arch, **options))
