"""Compile the attention kernel ahead of time for GPU targets, without a GPU: shared memory (Triton's
own figure), registers and spills (``ptxas -v``) per tile, next to kernels/attention.py's estimate.

    python benchmarks/gpu/aot_attention.py                      # the tiles tile_config picks
    python benchmarks/gpu/aot_attention.py --all --caps 80,90   # every candidate tile

Needs an installed lightcache (``lightcache.kernels``) and a Triton whose ``triton.compile`` takes
an ``ASTSource`` and a ``GPUTarget`` (3.x); TRITON_INTERPRET must be unset. ptxas is the one Triton
ships (``ptxas-blackwell`` where present: it reads the newest PTX). The numbers are compiler
output, not measurements on a GPU.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _ptxas():
    import triton.backends.nvidia as nv

    bin_dir = os.path.join(os.path.dirname(nv.__file__), "bin")
    for name in ("ptxas-blackwell", "ptxas"):
        path = os.path.join(bin_dir, name)
        if os.path.exists(path):
            return path
    return "ptxas"


def compile_tile(hd: int, dtype: str, tile: tuple, cap: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lightcache.kernels.attention import _attn_fwd_kernel as fn

    bm, bn, warps, stages = tile
    ty = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16"}[dtype]
    consts = dict(HAS_QN=True, HAS_KN=True, HAS_ROPE=True, HALF=hd // 2, BLOCK_M=bm, BLOCK_N=bn,
                  DOT_PREC="ieee" if dtype == "fp32" else "tf32")
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in ("Q", "K", "V", "O", "QW", "KW"):
            sig[name] = ty
        elif name in ("QINV", "KINV", "COS", "SIN"):
            sig[name] = "*fp32"
        else:
            sig[name] = "fp32" if name == "qk_scale" else "i32"
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    kernel = triton.compile(src, target=GPUTarget("cuda", cap, 32), options=dict(num_warps=warps, num_stages=stages))
    row = dict(shared=kernel.metadata.shared)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(kernel.asm["ptx"])
    try:
        arch = f"sm_{cap}a" if cap == 90 else f"sm_{cap}"
        err = subprocess.run([_ptxas(), f"-arch={arch}", "-v", f.name, "-o", os.devnull],
                             capture_output=True, text=True).stderr
    finally:
        os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", err)
    spill = re.search(r"(\d+) bytes spill stores", err)
    row.update(regs=int(regs.group(1)) if regs else None, spill_stores=int(spill.group(1)) if spill else None)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caps", default="80,86,90", help="compute capabilities, comma-separated")
    ap.add_argument("--all", action="store_true", help="every candidate tile, not only the chosen ones")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: the interpreter replaces @triton.jit")
    from lightcache.kernels import attention as A

    limits = {"164KB": 164 * 1024, "99KB": 99 * 1024, "48KB": 48 * 1024}
    print("dtype  D   tile (BM, BN, warps, stages)  chosen for  cap  estimate  shared  regs  spill stores")
    for dname, dtype in DTYPES.items():
        for hd in A.SUPPORTED_HEAD_DIMS:
            table = (A._TILES_FP32 if dtype == torch.float32 else A._TILES_16BIT)[hd]
            chosen = {}
            for label, smem in limits.items():
                chosen.setdefault(A.tile_config(hd, dtype, smem), []).append(label)
            tiles = table if args.all else list(chosen)
            for tile in tiles:
                est = A.smem_estimate(hd, dtype, tile[0], tile[1], tile[3])
                for cap in (int(c) for c in args.caps.split(",")):
                    r = compile_tile(hd, dname, tile, cap)
                    print(f"{dname:5s} {hd:3d}  {str(tile):28s}  {','.join(chosen.get(tile, ['-'])):10s}  {cap:3d}"
                          f"  {est:8d}  {r['shared']:6d}  {r['regs']}  {r['spill_stores']}", flush=True)


if __name__ == "__main__":
    main()
