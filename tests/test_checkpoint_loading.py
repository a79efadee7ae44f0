"""``lightcache bench --checkpoint``: a saved pipeline folder or a hub id (local hub cache first, no
network when cached), loaded in ``--dtype``, placed by ``--offload``; clear errors otherwise.

A tiny Wan pipeline saved with ``save_pretrained`` stands in for a real checkpoint (no network
here). About 15 s on 2 shared cores, most of it the two short bench runs."""

import shutil

import pytest
import torch

from lightcache import bench

from tiny_pipelines import build

HUB_ID = "lightcache-test/tiny-wan"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(pipeline folder, prompt-embeds file) of the tiny Wan pipeline."""
    root = tmp_path_factory.mktemp("ckpt")
    pipe, kw = build("wan")
    pipe.save_pretrained(root / "tiny-wan")
    torch.save({"prompt_embeds": kw["prompt_embeds"], "negative_prompt_embeds": kw["negative_prompt_embeds"]},
               root / "embeds.pt")
    return root / "tiny-wan", root / "embeds.pt"


def _load(folder, embeds, **kw):
    return bench.load_checkpoint(str(folder), "cpu", 2, None, str(embeds), 32, 32, 9, **kw)


def _expected_dtype(module, name, dtype):
    """from_pretrained(torch_dtype=...) keeps a model's ``_keep_in_fp32_modules`` in fp32."""
    keep = set(getattr(module, "_keep_in_fp32_modules", None) or ())
    return torch.float32 if keep.intersection(name.split(".")) else dtype


@pytest.mark.parametrize("flag,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16), (None, torch.float32)])
def test_checkpoint_loads_in_the_requested_dtype(saved, flag, dtype):
    folder, embeds = saved
    model = _load(folder, embeds, dtype=flag)
    n_cast = 0
    for comp in (model.pipe.transformer, model.pipe.vae):
        for name, p in comp.named_parameters():
            assert p.dtype == _expected_dtype(comp, name, dtype), (type(comp).__name__, name, p.dtype)
            n_cast += p.dtype == dtype
    assert n_cast > 0  # not everything was a kept-fp32 module
    assert model.kwargs["prompt_embeds"].dtype == dtype  # the embeddings follow the weights
    assert model.kwargs["negative_prompt_embeds"].dtype == dtype
    assert model.device == "cpu" and not model.random_weights
    assert f"{flag or 'fp32'})" in model.description  # CPU default: fp32


def test_checkpoint_runs_through_the_bench_in_bf16(saved, tmp_path, capsys):
    folder, embeds = saved
    result = bench.main(["--checkpoint", str(folder), "--prompt-embeds", str(embeds), "--dtype", "bf16", "--steps", "2",
                         "--repeats", "1", "--methods", "easycache", "--height", "32", "--width", "32", "--frames", "9",
                         "--out", str(tmp_path), "--no-progress"])
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["easycache"]["status"] == "ok" and rows["easycache"]["psnr"] is not None
    assert "bf16" in result["model_description"]
    assert "loading " + str(folder) in capsys.readouterr().err  # status line before the load


def _spy(monkeypatch, owner, name, calls):
    def record(self=None, *args, **kwargs):
        calls.append((name, self, args, kwargs))

    monkeypatch.setattr(owner, name, record)


@pytest.mark.parametrize("mode", ["model", "sequential", "group"])
def test_offload_modes_call_the_diffusers_method(saved, monkeypatch, mode):
    """Each --offload mode is the diffusers call named in the help (spied: on this CPU-only machine
    model and sequential offload need an accelerator, see the refusal test below)."""
    import diffusers.hooks
    from diffusers import DiffusionPipeline, ModelMixin

    calls = []
    _spy(monkeypatch, DiffusionPipeline, "enable_model_cpu_offload", calls)
    _spy(monkeypatch, DiffusionPipeline, "enable_sequential_cpu_offload", calls)
    _spy(monkeypatch, ModelMixin, "enable_group_offload", calls)
    monkeypatch.setattr(diffusers.hooks, "apply_group_offloading",
                        lambda module, **kw: calls.append(("apply_group_offloading", module, (), kw)))
    monkeypatch.setattr(DiffusionPipeline, "to", lambda self, *a, **k: calls.append(("to", self, a, k)) or self)
    folder, embeds = saved
    model = _load(folder, embeds, offload=mode)
    pipe = model.pipe
    if mode == "model":
        assert [(c[0], c[1], c[3]) for c in calls] == [("enable_model_cpu_offload", pipe, {"device": "cpu"})]
    elif mode == "sequential":
        assert [(c[0], c[1], c[3]) for c in calls] == [("enable_sequential_cpu_offload", pipe, {"device": "cpu"})]
    else:  # the denoiser block by block, the other model components (here the VAE) leaf by leaf
        assert [(c[0], c[1]) for c in calls] == [("enable_group_offload", pipe.transformer),
                                                 ("apply_group_offloading", pipe.vae)]
        assert calls[0][3]["offload_type"] == "block_level" and calls[0][3]["num_blocks_per_group"] == 1
        assert calls[0][3]["onload_device"] == torch.device("cpu")
        assert calls[1][3]["offload_type"] == "leaf_level"
    assert "offload " + mode in model.description


@pytest.mark.parametrize("mode", ["model", "group"])
def test_real_offload_hooks_compose_with_lightcache(mode):
    """The real diffusers/accelerate offload hooks (executing on the CPU here, which diffusers allows
    when the device is named) under a lightcache policy: the same video as without offload.
    (Sequential offload cannot run on a CPU-only machine: accelerate fails there without lightcache.)"""
    import lightcache
    from lightcache import PreciseCache

    pipe, kw = build("wan")
    kw["num_inference_steps"] = 5

    def cached():
        lightcache.enable(pipe, policy=PreciseCache(mode="flash"))
        try:
            video = pipe(**kw, generator=torch.Generator().manual_seed(0)).frames
            return video, lightcache.report(pipe).reuse_ratio
        finally:
            lightcache.disable(pipe)

    want, reuse = cached()
    bench.apply_offload(pipe, mode, "cpu")
    got, reuse_offloaded = cached()
    assert reuse > 0 and reuse_offloaded == reuse
    assert torch.equal(got, want)


def test_offload_none_moves_the_pipeline_to_the_device(saved, monkeypatch):
    from diffusers import DiffusionPipeline

    moved = []
    real_to = DiffusionPipeline.to
    monkeypatch.setattr(DiffusionPipeline, "to", lambda self, *a, **k: moved.append(a) or real_to(self, *a, **k))
    folder, embeds = saved
    _load(folder, embeds)
    assert moved == [("cpu",)]


def test_offload_on_cpu_and_dtype_without_checkpoint_are_refused(saved, tmp_path, capsys):
    folder, _ = saved
    for mode in ("model", "group", "sequential"):
        with pytest.raises(SystemExit):
            bench.main(["--checkpoint", str(folder), "--offload", mode, "--device", "cpu", "--out", str(tmp_path)])
        assert f"--offload {mode} moves weights between host memory and an accelerator" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--model", "wan-tiny", "--dtype", "fp16", "--out", str(tmp_path)])
    assert "--dtype applies to --checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--checkpoint", str(folder), "--dtype", "int8", "--out", str(tmp_path)])
    assert "argument --dtype: invalid choice: 'int8'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="offload must be one of none, model, group, sequential"):
        bench.apply_offload(None, "disk", "cpu")


def test_diffusers_model_offload_needs_an_accelerator():
    """Why the bench refuses --offload model/sequential with --device cpu: diffusers itself has no
    accelerator to offload to (it raises when none is found)."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    pipe, _ = build("wan")
    with pytest.raises(RuntimeError, match="requires accelerator"):
        pipe.enable_model_cpu_offload()


def _fake_hub_cache(root, folder):
    """The layout huggingface_hub uses for a downloaded repo: refs/main -> a snapshot folder."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + HUB_ID.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def test_a_cached_hub_id_loads_without_the_network(saved, tmp_path, monkeypatch, capsys):
    from diffusers import DiffusionPipeline

    folder, embeds = saved
    snapshot = _fake_hub_cache(tmp_path / "hub", folder)
    real = DiffusionPipeline.download.__func__
    asked = []

    def download(cls, name, **kw):
        asked.append(kw.get("local_files_only"))
        if not kw.get("local_files_only"):
            raise AssertionError("the network was asked for a cached checkpoint")
        return real(cls, name, **kw)

    monkeypatch.setattr(DiffusionPipeline, "download", classmethod(download))
    model = bench.load_checkpoint(HUB_ID, "cpu", 2, None, str(embeds), 32, 32, 9, dtype="fp16",
                                  cache_dir=str(tmp_path / "hub"))
    assert asked == [True]
    assert model.pipe.transformer.proj_out.weight.dtype == torch.float16
    assert model.description.startswith(f"checkpoint {HUB_ID} (WanPipeline, fp16")
    assert f"found in the local hub cache ({snapshot}); no network used" in capsys.readouterr().err


def test_an_uncached_hub_id_without_network_is_a_clear_error(tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    real = DiffusionPipeline.download.__func__

    def no_network(cls, name, **kw):
        if kw.get("local_files_only"):
            return real(cls, name, **kw)  # the real cache look-up: an empty cache
        raise OSError("Couldn't connect to 'https://huggingface.co' (no network)")

    monkeypatch.setattr(DiffusionPipeline, "download", classmethod(no_network))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(SystemExit, match=rf"--checkpoint {HUB_ID}: not in the local hub cache \({tmp_path}\) and the "
                                         r"download failed: OSError: Couldn't connect"):
        bench.resolve_checkpoint(HUB_ID, cache_dir=str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: the network is not even tried
    monkeypatch.setattr(DiffusionPipeline, "download", classmethod(
        lambda cls, name, **kw: real(cls, name, **kw) if kw.get("local_files_only") else pytest.fail("network tried")))
    with pytest.raises(SystemExit, match=rf"--checkpoint {HUB_ID}: not in the local hub cache \({tmp_path}\) and "
                                         "HF_HUB_OFFLINE is set"):
        bench.resolve_checkpoint(HUB_ID, cache_dir=str(tmp_path))


def test_neither_folder_nor_hub_id_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="not a diffusers pipeline folder \\(no model_index.json there\\)"):
        bench.resolve_checkpoint(str(tmp_path / "empty"))
    with pytest.raises(SystemExit, match="no such folder .* and not a hub id of the form owner/name"):
        bench.resolve_checkpoint(str(tmp_path / "a" / "b"))


def test_a_peer_that_hooks_nothing_is_caught_under_group_offload():
    """Group offload puts a diffusers hook on every block: the bench's "hooked nothing" check counts
    only the hooks the peer's config added."""
    from diffusers import TaylorSeerCacheConfig

    pipe, kw = build("wan")
    bench.apply_offload(pipe, "group", "cpu")
    assert bench._hooked_modules(pipe.transformer) > 0  # the offload hooks
    model = bench.BenchModel(pipe, kw, "dit", False, "tiny wan", device="cpu")
    enable, _ = bench._diffusers_peer(lambda m, steps: TaylorSeerCacheConfig())  # default patterns: no Wan module
    with pytest.raises(RuntimeError, match="TaylorSeerCacheConfig hooked no module of WanTransformer3DModel"):
        enable(model, 2)
    assert not pipe.transformer.is_cache_enabled
