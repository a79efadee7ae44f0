"""CPU reference kernels of the lightcache ops, in plain torch (one file per op family).

These are the ops' CPU implementations (registered in :mod:`lightcache.ops`); they follow the same
algorithm as the CUDA kernels (chunking, partial DFT, online softmax) so the CPU path is the CUDA
path's tested twin. Tests compare them against independent, naive formulas.
"""

from lightcache.reference.attention import chunked_attention
from lightcache.reference.ffn import chunked_ffn
from lightcache.reference.lerp import lerp
from lightcache.reference.lowfreq import lowfreq_energy
from lightcache.reference.rel_l1 import rel_l1
from lightcache.reference.reuse import quantize_fp8, reuse

__all__ = ["reuse", "quantize_fp8", "lerp", "rel_l1", "lowfreq_energy", "chunked_ffn", "chunked_attention"]
