"""Compile every Triton kernel to an sm_90 (H100) cubin without a GPU; run in a fresh process
without TRITON_INTERPRET. The interpreter accepts code the compiler rejects; this catches that."""
from __future__ import annotations

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from inference.kernels.paged_attention import _paged_attention_kernel
from inference.kernels.sgmv import _expand_kernel, _shrink_kernel

H100 = GPUTarget("cuda", 90, 32)


def compile_kernel(kernel, pointer_types: dict[str, str], constexprs: dict[str, object]) -> None:
    """Arguments not named in either dict are int32 scalars (sizes and strides)."""
    names = kernel.arg_names
    signature = {n: "constexpr" if n in constexprs else pointer_types.get(n, "i32") for n in names}
    source = ASTSource(kernel, signature, {(names.index(k),): v for k, v in constexprs.items()})
    compiled = triton.compile(source, target=H100)
    assert "cubin" in compiled.asm, kernel.fn.__name__


def main() -> None:
    segments = {p: "*i32" for p in ("starts_ptr", "ends_ptr", "slots_ptr", "ranks_ptr")}
    for dt in ("bf16", "fp16", "fp32"):
        fp32 = dt == "fp32"
        for block_m in (16, 64):        # 16: decode steps (one token per segment, GQA group 7); 64: prefill
            compile_kernel(_shrink_kernel, {"x_ptr": f"*{dt}", "a_ptr": f"*{dt}", "out_ptr": "*fp32", **segments},
                           dict(BLOCK_M=block_m, BLOCK_K=64, BLOCK_R=64, DOT_FP32=fp32))
            compile_kernel(_paged_attention_kernel,
                           {"q_ptr": f"*{dt}", "k_ptr": f"*{dt}", "v_ptr": f"*{dt}", "out_ptr": f"*{dt}",
                            "tables_ptr": "*i64", "seq_lens_ptr": "*i32", "query_start_ptr": "*i32",
                            "scale_log2": "fp32"},
                           dict(GROUP=7, HEAD_DIM=64, BLOCK_D=64, PAGE_SIZE=16, BLOCK_M=block_m, BLOCK_N=64,
                                DOT_FP32=fp32))
        compile_kernel(_expand_kernel, {"y_ptr": f"*{dt}", "s_ptr": "*fp32", "b_ptr": f"*{dt}",
                                        "scales_ptr": "*fp32", **segments},
                       dict(BLOCK_M=16, BLOCK_N=64, BLOCK_R=64, DOT_FP32=fp32))
    print("compiled", file=sys.stderr)


if __name__ == "__main__":
    main()
