"""LTX-2 (LTX2Pipeline): a tiny random-weight pipeline, built offline from configs (transformer,
text connectors, video VAE, audio VAE, vocoder; precomputed prompt embeddings, no Gemma).

Its denoiser returns two predictions, video and audio: the family's adapter declares the audio
as a further output stream (lightcache/models/ltx2), reused with the video's decisions. The
matrix compares the video; tests/test_family_ltx2.py checks the audio too (bit-identical when
lossless, reused with the video, swapped through the store) and the pipeline's three guidance
calls a step (STG and modality guidance on), which are off here (one batched cond/uncond call a
step). The pipeline deep-copies its scheduler for the audio latents (the engine taps copies).
"""


from tiny_pipelines import _flow_match_scheduler, _masked_text_embeds, _Seeder

FAMILY = "ltx2"


def build(s: _Seeder):
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        LTX2Pipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    text_dim, factor, seq, mel_bins, audio_z = 16, 2, 8, 16, 4
    s()
    # packed audio tokens: audio_z channels x mel_bins // 4 latent mel bins
    transformer = LTX2VideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=audio_z * mel_bins // 4, audio_out_channels=audio_z * mel_bins // 4,
        audio_num_attention_heads=2, audio_attention_head_dim=8, audio_cross_attention_dim=16, num_layers=2,
        caption_channels=text_dim, vae_scale_factors=(8, 8, 8),
    )
    s()
    connectors = LTX2TextConnectors(
        caption_channels=text_dim, text_proj_in_factor=factor, video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=None,
        audio_connector_num_attention_heads=2, audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32,
    )
    s()
    # the decoder's three spatio-temporal upsamplers give 8x in time and space; the ratios are set to
    # match (text-to-video never runs the encoder)
    vae = AutoencoderKLLTX2Video(
        latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 16, 32),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(0, 0, 0, 0), spatio_temporal_scaling=(True,) * 4,
        decoder_spatio_temporal_scaling=(True,) * 3, decoder_inject_noise=(False,) * 4, upsample_factor=(2, 2, 2),
        patch_size=1, patch_size_t=1, spatial_compression_ratio=8, temporal_compression_ratio=8,
    )
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    s()
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=audio_z * mel_bins // 4, output_channels=2, ch_mult=(1, 2), num_res_blocks=1, in_channels=2,
        latent_channels=audio_z, mel_bins=mel_bins, resolution=32,
    )
    s()
    vocoder = LTX2Vocoder(
        in_channels=2 * mel_bins, hidden_channels=8, out_channels=2, upsample_kernel_sizes=[4, 4],
        upsample_factors=[2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1]],
    )
    pipe = LTX2Pipeline(
        scheduler=_flow_match_scheduler(), vae=vae, audio_vae=audio_vae, text_encoder=None, tokenizer=None,
        connectors=connectors, transformer=transformer, vocoder=vocoder,
    )
    kwargs = dict(
        **_masked_text_embeds(s, seq, text_dim * factor, 6, 3),
        height=32,
        width=32,
        num_frames=9,
        frame_rate=8.0,
        guidance_scale=3.0,
        # one (batched cond/uncond) denoiser call a step: no spatio-temporal or modality guidance
        stg_scale=0.0,
        modality_scale=1.0,
        audio_stg_scale=0.0,
        audio_modality_scale=1.0,
    )
    return pipe, kwargs


# one batched cond/uncond call a step; 17 frames (3 latent frames) for the second-size call; the
# blocks have no DiT chunk spec: chunking splits their feed-forward layers and attention queries
MATRIX = dict(frames=17, chunk=8)
