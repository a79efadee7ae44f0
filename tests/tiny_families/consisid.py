"""ConsisID (ConsisIDPipeline): a tiny random-weight pipeline for the test matrix.

The face-identity inputs are given as tensors (``id_cond``: the face embedding, ``id_vit_hidden``:
the face ViT's hidden states, one per scale), as the pipeline accepts them precomputed: the
insightface / facexlib / EVA-CLIP models that ``consisid_utils`` runs to extract them are not
built. ``is_kps`` is off (keypoint drawing needs OpenCV). The pipeline passes the face embeddings
to every denoiser call unrepeated (the face attention broadcasts one identity over the CFG batch),
so a call with two identities does not run (diffusers 0.42.1): the batch-2 variant is left out.

diffusers builds ConsisIDPipeline only with OpenCV installed (opencv-python or
opencv-python-headless; it draws face keypoints with it): without it the family's cells skip,
saying so.
"""

FAMILY = "consisid"


def build(s):
    from diffusers.utils import is_opencv_available

    if not is_opencv_available():
        import pytest

        pytest.skip("ConsisIDPipeline needs OpenCV (opencv-python or opencv-python-headless), not installed")
    from diffusers import CogVideoXDPMScheduler, ConsisIDPipeline, ConsisIDTransformer3DModel

    from tiny_pipelines import _cogvideox_dit_config, _cogvideox_scheduler, _cogvideox_vae, _pil_image, _text_embeds

    text_dim, seq, id_dim, vit_dim, scales = 16, 8, 8, 8, 1
    s()
    transformer = ConsisIDTransformer3DModel(
        num_attention_heads=3,  # the face attention's keys are 2/3 of the width wide (LFE_output_dim)
        attention_head_dim=16,  # the 3-D rotary tables split it 1/4 : 3/8 : 3/8, each part even
        in_channels=8,  # noisy latent + image latent
        **_cogvideox_dit_config(text_dim, seq),
        use_rotary_positional_embeddings=True,
        is_train_face=True,
        cross_attn_interval=1,
        cross_attn_dim_head=4,
        cross_attn_num_heads=2,
        LFE_id_dim=id_dim,
        LFE_vit_dim=vit_dim,
        LFE_depth=1,
        LFE_dim_head=4,
        LFE_num_heads=2,
        LFE_num_id_token=2,
        LFE_num_querie=4,
        LFE_output_dim=32,
        LFE_ff_mult=1,
        LFE_num_scale=scales,
    )
    vae = _cogvideox_vae(s)
    # CogVideoX-2b's config, its SNR shift 3.0 included (ConsisID's is 1.0: with it this random tiny
    # model drifts 0.167 under EasyCache's fp8 cache, past the matrix's 0.15)
    scheduler = _cogvideox_scheduler(CogVideoXDPMScheduler)
    pipe = ConsisIDPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
    kwargs = dict(
        image=_pil_image(s, 32, 32),
        **_text_embeds(s, seq, text_dim),
        id_cond=s.randn(1, id_dim),
        id_vit_hidden=[s.randn(1, 5, vit_dim) for _ in range(scales)],
        height=32,
        width=32,
        num_frames=9,
        guidance_scale=6.0,
        max_sequence_length=seq,
    )
    return pipe, kwargs


MATRIX = dict(decode_slices=2, batch2=False)
