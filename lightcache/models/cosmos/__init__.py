"""Cosmos (1.0 and 2.0 video-to-world / text-to-world: ``CosmosTransformer3DModel``): one list of
blocks, each returning the hidden states; CFG is two denoiser calls a step; the latent is
(B, C, T, H, W), with a per-frame conditioning mask and per-frame timesteps in video-to-world.

Denoiser only: diffusers' Cosmos pipelines build a ``CosmosSafetyChecker`` (the
``cosmos_guardrail`` package, whose guardrail models are downloaded) when none is given, and
refuse to run with ``safety_checker=None`` (a ValueError citing the NVIDIA Open Model License), so
a pipeline cannot run offline here. Cosmos 2.0's VAE (``AutoencoderKLWan``) has Wan's sliced
decode; Cosmos 1.0's ``AutoencoderKLCosmos`` has none (its decoder's temporal attention is causal
over every earlier frame and its GroupNorms span all frames, so no temporal slice short of the
whole past gives its output).
"""

from lightcache.models.cosmos.adapter import CosmosAdapter
from lightcache.models.cosmos.chunk import CosmosChunking
from lightcache.models.cosmos.layout import CosmosLayout
from lightcache.models.registry import ModelFamily, register_family

COSMOS = register_family(
    ModelFamily(
        adapter=CosmosAdapter(
            family="cosmos",
            model_classes=("CosmosTransformer3DModel",),
            block_lists=("transformer_blocks",),
            layout=CosmosLayout(),
        ),
        chunking={"CosmosTransformerBlock": CosmosChunking()},
    )
)
