import pytest
import yaml

from clip4vla.config import ConfigError, PretrainConfig, load_config, save_config


def test_defaults_follow_the_paper():
    cfg = load_config(PretrainConfig)
    assert cfg.audio.frontend == "kaldi"
    assert cfg.audio.max_segments == 10
    assert cfg.model.train_clip is False
    assert cfg.pretrain.init_scale is None and cfg.pretrain.learnable_scale is False  # fixed scale 100 (REF)
    assert cfg.optim.betas == (0.9, 0.98)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-7\n  betas: [0.8, 0.9]\ntrain:\n  epochs: 3\n")
    cfg = load_config(PretrainConfig, path, ["train.epochs=5", "audio.frontend=reference", "model.init_from=/x/ViT-B-32.pt"])
    assert cfg.optim.lr == pytest.approx(1e-7)
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.train.epochs == 5
    assert cfg.audio.frontend == "reference"
    assert cfg.model.init_from == "/x/ViT-B-32.pt"
    override_sci = load_config(PretrainConfig, None, ["optim.lr=5e-4"])
    assert override_sci.optim.lr == pytest.approx(5e-4)


def test_unknown_key_in_yaml_lists_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, path)
    msg = str(err.value)
    assert "optim.lr_rate" in msg and "'lr'" in msg and "c.yaml" in msg


def test_unknown_section_and_override_key():
    with pytest.raises(ConfigError, match="valid keys"):
        load_config(PretrainConfig, None, ["optimiser.lr=0.1"])
    with pytest.raises(ConfigError, match="lr_rate"):
        load_config(PretrainConfig, None, ["optim.lr_rate=0.1"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(PretrainConfig, None, ["optim.lr.x=0.1"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(PretrainConfig, None, ["optim.lr"])


def test_wrong_types_and_choices():
    with pytest.raises(ConfigError, match="audio.frontend"):
        load_config(PretrainConfig, None, ["audio.frontend=librosa"])
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(PretrainConfig, None, ["train.epochs=ten"])
    with pytest.raises(ConfigError, match="model.train_clip"):
        load_config(PretrainConfig, None, ["model.train_clip=3"])


def test_missing_and_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(PretrainConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(PretrainConfig, bad)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(PretrainConfig, None, ["train.epochs=2", "optim.lr=0.001"])
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert yaml.safe_load(out.read_text())["train"]["epochs"] == 2
    assert load_config(PretrainConfig, out) == cfg


def test_corpus_sections_are_typed_and_optional(tmp_path):
    cfg = load_config(PretrainConfig)
    assert cfg.data.msrvtt is None and cfg.data.corpus == "synthetic"
    # an override creates an optional section the file left out ...
    cfg = load_config(PretrainConfig, None, ["data.corpus=msrvtt", "data.msrvtt.annotation_dir=/d/msrvtt"])
    assert cfg.data.msrvtt.annotation_dir == "/d/msrvtt" and cfg.data.msrvtt.video_dir is None
    # ... a misspelt path key fails like any other key, naming the valid ones ...
    with pytest.raises(ConfigError, match=r"data\.msrvtt\.anotation_dir.*annotation_dir"):
        load_config(PretrainConfig, None, ["data.msrvtt.anotation_dir=/d"])
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  vatex: {video_dir: /v}\n")
    # ... and a section without its required key names it
    with pytest.raises(ConfigError, match=r"missing required config key.*data\.vatex\.annotation_dir"):
        load_config(PretrainConfig, path)
    saved = save_config(load_config(PretrainConfig, None, ["data.msrvtt.annotation_dir=/d"]), tmp_path / "s.yaml")
    assert load_config(PretrainConfig, saved).data.msrvtt.annotation_dir == "/d"


def test_print_config_shows_the_keys_of_the_per_corpus_sections(tmp_path, capsys):
    """--print-config lists every key --set can change: a corpus section that is not set shows its
    keys and defaults (as comments, so the printout still loads as the same config)."""
    import dataclasses
    import typing

    from clip4vla.config import DataConfig, config_to_dict
    from script_checks import load_script

    assert load_script("pretrain").main(["--print-config"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    hints = typing.get_type_hints(DataConfig)
    for corpus in ("msrvtt", "vatex", "audiocaps", "howto100m", "audioset", "esc50", "ucf101"):
        start = lines.index(next(line for line in lines if line.startswith(f"  {corpus}: null")))
        section = typing.get_args(hints[corpus])[0]
        shown = [line.split(":")[0].strip("# ") for line in lines[start + 1:start + 1 + len(dataclasses.fields(section))]]
        assert shown == [f.name for f in dataclasses.fields(section)], (corpus, shown)
        assert f"--set data.{corpus}.KEY=VALUE" in lines[start]
    assert "  #   annotation_dir: (required)" in lines and "  #   val_source: official" in lines
    path = tmp_path / "printed.yaml"
    path.write_text(text)
    assert yaml.safe_load(text) == config_to_dict(load_config(PretrainConfig, path))
    # a section that is set prints its values
    assert load_script("pretrain").main(["--print-config", "--set", "data.msrvtt.annotation_dir=/x"]) == 0
    assert "  msrvtt:\n    annotation_dir: /x\n    video_dir: null\n" in capsys.readouterr().out
