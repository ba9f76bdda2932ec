import pytest

from anomalens import registry
from anomalens.config import load_settings
from anomalens.errors import BackendNotFound, ConfigError, MissingExtra


def test_load_imports_the_registered_class():
    from anomalens.tools.scene import SceneScorer

    assert registry.load("scorer:scene") is SceneScorer


def test_unknown_backend_lists_what_exists():
    with pytest.raises(BackendNotFound, match="unknown backend 'scorer:nope'; available: scorer:scene"):
        registry.get("scorer:nope")


def test_missing_extra_names_the_pip_install(monkeypatch):
    fake = registry.Backend(
        name="detector:fake", target="fake_module:Fake", requires=("surely_not_installed_pkg",), extra="clip"
    )
    monkeypatch.setitem(registry.backends(), fake.name, fake)
    with pytest.raises(MissingExtra, match=r"needs surely_not_installed_pkg: pip install 'anomalens\[clip\]'"):
        registry.load("detector:fake")


def test_settings_layer_file_environment_and_arguments(tmp_path, monkeypatch):
    config = tmp_path / "anomalens.toml"
    config.write_text('max_side = 480\nmodel_dir = "/models"\n')
    monkeypatch.delenv("ANOMALENS_MODEL_DIR", raising=False)  # the caller's own store must not leak in
    monkeypatch.setenv("ANOMALENS_MAX_SIDE", "320")
    settings = load_settings(config)
    assert settings.max_side == 320 and str(settings.model_dir) == "/models"
    assert load_settings(config, max_side=800).max_side == 800


def test_bad_settings_name_the_file_and_field(tmp_path, monkeypatch):
    monkeypatch.delenv("ANOMALENS_MAX_SIDE", raising=False)
    bad = tmp_path / "bad.toml"
    bad.write_text("max_side = 4\n")
    with pytest.raises(ConfigError, match=r"bad.toml: max_side: Input should be greater than or equal to 16"):
        load_settings(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("max_side = = 4\n")
    with pytest.raises(ConfigError, match="broken.toml: invalid TOML"):
        load_settings(broken)
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "none.toml")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("max_sid = 4\n")
    with pytest.raises(ConfigError, match="max_sid: Extra inputs are not permitted"):
        load_settings(unknown)


def test_each_backend_is_described_once_with_its_checkpoints_and_preference():
    from anomalens import modelstore, weights
    from anomalens.tools import tiny

    described = registry.backends()
    # Checkpoints belong to the backend that loads them, and names are unique across backends.
    assert weights.checkpoints()["owlv2-base"].backend == "detector:owlv2"
    names = [c.name for b in described.values() for c in b.checkpoints]
    assert len(names) == len(set(names))
    assert weights.checkpoints()["sam-vit-base"].pinned and not weights.checkpoints()["smolvlm-256m"].pinned
    # A kind's preference order is the file's order.
    assert [b.name for b in registry.of_kind("detector")][:2] == ["detector:grounding-dino", "detector:owlv2"]
    # Every model backend loads real weights from the model store, or names a tiny builder that exists, or says
    # why none is built.
    for backend in described.values():
        if backend.kind in ("clip", "detector", "segmenter", "captioner", "pose", "embedder"):
            assert [backend.store is not None, backend.tiny is not None, backend.not_built is not None].count(True) == 1
            assert backend.tiny is None or callable(getattr(tiny, backend.tiny)), backend.name
            assert backend.store is None or backend.store in modelstore.catalog(), backend.name
