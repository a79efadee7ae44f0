"""Triton kernels of lightcache, installed as ``lightcache.kernels``.

One kernel family per file; each file exposes a launcher taking torch tensors. Launchers hold no
policy logic and do not validate arguments (lightcache.ops does). Under ``TRITON_INTERPRET=1`` the
launchers run on CPU tensors, which is how they are tested on machines without a GPU.
"""
