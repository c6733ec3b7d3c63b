"""Every kernel file in streamdag/kernels compiles to an sm_90 cubin with NVRTC (no GPU)."""

from __future__ import annotations

import pytest

from streamdag.errors import CompileError
from streamdag.kernels import KERNEL_DIR, cache_key, compile_cubin, signatures, sources

ELF_MAGIC = b"\x7fELF"


def test_the_folder_has_kernels() -> None:
    assert "scheduler.cu" in sources()
    assert sorted(p.name for p in KERNEL_DIR.glob("*.cu")) == sources()


@pytest.mark.parametrize("file", sources())
def test_kernel_file_compiles_for_sm90(file: str, tmp_path) -> None:
    cubin = compile_cubin(file, arch="sm_90", cache_dir=tmp_path)
    assert cubin[:4] == ELF_MAGIC
    for name in signatures(file):  # every extern "C" kernel made it into the cubin
        assert name.encode() in cubin
    assert compile_cubin(file, arch="sm_90", cache_dir=tmp_path) == cubin  # from the cache
    assert len(list(tmp_path.glob("*.cubin"))) == 1


def test_signatures_are_parsed() -> None:
    sig = signatures("scheduler.cu")
    assert sig["empty"] == ()
    assert sig["saxpy"] == ("float", "const float*", "float*", "unsigned int")
    assert sig["mix2_grouped"] == ("const mix2_args*", "unsigned int")


def test_cache_key_covers_headers_and_options(tmp_path, monkeypatch) -> None:
    base = cache_key("scheduler.cu", arch="sm_90")
    assert cache_key("scheduler.cu", arch="sm_80") != base
    assert cache_key("scheduler.cu", arch="sm_90", defines=["X=1"]) != base
    import streamdag.kernels as k

    original = k._read

    def patched(name: str) -> str:
        text = original(name)
        return text + "\n// changed\n" if name == "grouped.cuh" else text

    monkeypatch.setattr(k, "_read", patched)
    assert cache_key("scheduler.cu", arch="sm_90") != base


def test_nvrtc_errors_carry_the_log(tmp_path, monkeypatch) -> None:
    import streamdag.kernels as k

    bad = tmp_path / "bad_kernel.cu"
    bad.write_text('extern "C" __global__ void broken() { int x = ; }\n')
    monkeypatch.setattr(k, "KERNEL_DIR", tmp_path)
    with pytest.raises(CompileError) as info:
        compile_cubin("bad_kernel.cu", arch="sm_90", cache_dir=tmp_path / "cache")
    assert "expected an expression" in info.value.log
    assert not (tmp_path / "cache").exists()
    with pytest.raises(CompileError, match="no kernel source"):
        compile_cubin("missing.cu", arch="sm_90", cache_dir=tmp_path / "cache")


def test_no_such_device_is_a_backend_error() -> None:
    from streamdag.driver import Gpu
    from streamdag.errors import BackendError

    with pytest.raises(BackendError, match="cannot open CUDA device 999"):
        Gpu(999)
