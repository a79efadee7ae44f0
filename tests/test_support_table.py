"""The support table (lightcache.models.support): one row per registered family, read from the
registry; the README's copy equals the generated table; every pipeline named exists in diffusers
and takes the family's denoiser. Imports every diffusers pipeline module once (about 10 s)."""

from pathlib import Path

import pytest

import lightcache.models as models
from lightcache.models import registry, support

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_support_table_is_the_generated_one():
    block = support.readme_block(README.read_text(encoding="utf-8"))
    assert block == support.support_table(), (
        "README.md's support table is stale: run python -m lightcache.models.support --write-readme README.md")


def test_one_row_per_registered_family_from_its_entry():
    rows = models.supported()
    assert [r.family for r in rows] == sorted(f.name for f in models.families())
    assert models.supported(markdown=True) == models.support_table() == support.support_table()
    for row in rows:
        entry = models.family(row.family)
        assert row.denoisers == entry.adapter.model_classes
        if entry.adapter.unet:
            assert row.policies == ("DeepCache",) and row.chunk_spec == "UNet"
        else:
            assert row.policies == ("EasyCache", "ForecastCache", "PreciseCache")
            assert row.chunk_spec == ("yes" if entry.chunking else "no")
    by_name = {r.family: r for r in rows}
    # facts of diffusers 0.42 (a _cp_plan on Wan and LTX-Video, not CogVideoX) and of the slicers
    assert by_name["wan"].context_parallel and by_name["ltx"].context_parallel
    assert not by_name["cogvideox"].context_parallel and not by_name["svd"].context_parallel
    assert by_name["wan"].sliced_decode == "exact" and by_name["hunyuan_video"].sliced_decode == "inexact"
    assert by_name["svd"].sliced_decode == "inexact"
    assert {"WanPipeline", "WanImageToVideoPipeline"} <= set(by_name["wan"].pipelines)
    assert by_name["cogvideox"].pipelines[0].startswith("CogVideoX")


def test_every_listed_pipeline_exists_and_takes_the_familys_denoiser():
    table = registry._DENOISERS
    for row in models.supported():
        for pipe in row.pipelines:
            denoisers, _ = support._pipeline_signature(pipe)
            assert denoisers, f"{row.family}: {pipe} is not a diffusers pipeline taking a transformer or unet"
            assert row.family in {support._family_of_class(d, table) for d in denoisers}, (
                f"{row.family}: {pipe} takes {denoisers}, none of them the family's")


def test_declared_pipelines_are_used_and_checked(monkeypatch):
    for name in ("_FAMILIES", "_DENOISERS", "_BLOCKS", "_VAES"):
        monkeypatch.setattr(registry, name, dict(getattr(registry, name)))
    wan = models.family("wan")
    models.register_family(models.ModelFamily(wan.adapter, wan.chunking, wan.slicers, wan.presets,
                                              pipelines=("WanPipeline",)))
    assert next(r for r in models.supported() if r.family == "wan").pipelines == ("WanPipeline",)
    with pytest.raises(TypeError, match=r"ModelFamily\.pipelines must be a tuple of diffusers pipeline class names"):
        models.register_family(models.ModelFamily(wan.adapter, pipelines=["WanPipeline"]))
    # a declared name that is no diffusers pipeline of the family is what the check above catches
    assert support._pipeline_signature("NoSuchPipeline") == ((), ())
    assert support._family_of_class("CogVideoXTransformer3DModel", registry._DENOISERS) == "cogvideox"


def test_write_readme_rewrites_only_the_block(tmp_path, capsys):
    path = tmp_path / "README.md"
    path.write_text(f"# x\n\nbefore\n{support.START}\nstale\n{support.END}\nafter\n", encoding="utf-8")
    assert support.main(["--write-readme", str(path)]) == 0
    text = path.read_text(encoding="utf-8")
    assert text == f"# x\n\nbefore\n{support.START}\n{support.support_table()}{support.END}\nafter\n"
    assert support.main(["--write-readme", str(path)]) == 0
    assert "already up to date" in capsys.readouterr().out
    path.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(ValueError, match="must hold one <!-- support-table:start --> line followed by one"):
        support.main(["--write-readme", str(path)])
