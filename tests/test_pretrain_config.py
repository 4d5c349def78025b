"""Strict configs: unknown keys and wrong types fail with the key named; recipes inherit; --set is type-checked."""

from __future__ import annotations

import pytest
import yaml

from training.config import (
    ConfigError,
    PretrainConfig,
    apply_overrides,
    from_dict,
    list_recipes,
    load_config,
    save_config,
    to_dict,
)
from training.pretrain import main
from training.pretraining.model import checked_method_options


def test_unknown_key_is_rejected_with_its_dotted_name():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) optim\.learning_rate.*valid keys of optim are"):
        from_dict({"optim": {"learning_rate": 0.1}})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"train": {"epochs": "ten"}}, r"train\.epochs: expected an int, got str 'ten'"),
        ({"train": {"epochs": 1.5}}, r"train\.epochs: expected an int, got float"),
        ({"train": {"channels_last": 1}}, r"train\.channels_last: expected true/false, got int"),
        ({"optim": {"lr": True}}, r"optim\.lr: expected a float, got bool"),
        ({"data": {"datasets": "voc"}}, r"data\.datasets: expected a list, got str"),
        ({"train": {"stages": [{"datasets": ["voc_aug"], "epoch": 3}]}}, r"train\.stages\[0\]\.epoch"),
    ],
)
def test_wrong_types_are_rejected(values, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(values)


def test_int_is_accepted_for_float_and_round_trips():
    config = from_dict({"optim": {"lr": 1}})
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert from_dict(to_dict(config)) == config


def test_set_overrides_are_parsed_as_yaml_and_checked():
    values = apply_overrides(
        {}, ["optim.lr=0.5", "data.scale_range=[1, 2]", "train.compile=true", "method.options.tau=0.2"]
    )
    config = from_dict(values)
    assert config.optim.lr == 0.5 and config.data.scale_range == [1.0, 2.0] and config.train.compile is True
    assert config.method.options == {"tau": 0.2}
    with pytest.raises(ConfigError, match=r"unknown key optim\.lrr"):
        apply_overrides({}, ["optim.lrr=0.5"])
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an int"):
        load_config("demo", ["train.epochs=many"])


def test_method_options_are_checked_against_the_method():
    with pytest.raises(ConfigError, match=r"method\.options\.temperature: method 'mdp' has no such option"):
        checked_method_options(load_config("demo", ["method.options.temperature=0.1"]))
    with pytest.raises(ConfigError, match=r"method\.options\.window: expected int"):
        checked_method_options(load_config("demo", ["method.options.window=0.5"]))


def test_every_shipped_recipe_loads_and_fits_its_method():
    names = list_recipes()
    assert "demo" in names and "voc_ade20k_coco_200ep" in names and not any(n.startswith("finetune_") for n in names)
    for name in names:
        config = load_config(name)
        assert config.name == name, "an inherited name would mislabel runs and exports"
        checked_method_options(config)


def test_inheritance_merges_sections_and_method_switch_drops_foreign_options():
    base, child = load_config("voc_ade20k_100ep"), load_config("voc_ade20k_200ep")
    assert child.train.epochs == 200 and child.method == base.method and child.data == base.data
    pixel = load_config("ablate_memory_pixel_to_pixel_voc_200ep")
    assert pixel.method.name == "pixel_to_pixel" and pixel.method.options == {"tau": 0.07}
    sequential = load_config("baseline_sequential_coco_ade20k_voc")
    assert [s.datasets for s in sequential.train.stages] == [["coco_stuff164k"], ["ade20k"], ["voc_aug"]]


def test_recipe_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: demo\ntrain:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key\(s\) train\.epochz"):
        load_config(str(bad))
    cycle = tmp_path / "a.yaml"
    cycle.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="inheritance cycle"):
        load_config(str(cycle))
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        load_config("nope")


def test_resolved_config_file_reloads_identically(tmp_path):
    config = load_config("demo", ["optim.lr=0.25"])
    save_config(config, tmp_path / "config.yaml")
    assert from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == config
    assert isinstance(config, PretrainConfig)


def test_cli_reports_config_errors_without_a_traceback(capsys):
    assert main(["--set", "train.batch_size=big"]) == 2
    assert "train.batch_size: expected an int" in capsys.readouterr().err


def test_numbers_are_read_as_people_write_them():
    config = load_config("demo", ["optim.lr=1e-4", "method.options.tau=7E-2", "train.epochs=3"])
    assert config.optim.lr == 1e-4 and config.method.options["tau"] == 0.07 and config.train.epochs == 3
    checked_method_options(config)  # a float option, not a string "7E-2"


def test_an_unknown_dataset_format_is_one_clear_line(tmp_path, capsys):
    from training.pretrain import main

    assert main(["--output", str(tmp_path / "run"), "--set", f"data.datasets=[vocc:{tmp_path}]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown dataset 'vocc'; known: voc_aug" in err[0]
    assert not (tmp_path / "run").exists(), "a refused run leaves no empty run folder"


@pytest.mark.parametrize("batch, world_size, window", [(8, 8, 4096), (8, 1, 512), (2, 2, 256), (16, 8, 8192)])
def test_the_paper_window_is_kept_in_steps_at_any_global_batch(batch, world_size, window):
    from training.engine.distributed import DistInfo
    from training.pretraining.run import scale_memory_window

    cfg = load_config("voc_ade20k_100ep", [f"train.batch_size={batch}"])
    assert (cfg.method.window_reference_batch, cfg.method.options["window"]) == (64, 4096)
    scale_memory_window(cfg, DistInfo(rank=0, world_size=world_size, local_rank=0, device=None))
    assert (cfg.method.options["window"], cfg.method.window_reference_batch) == (window, 0)  # the config that ran
    ablation = load_config("ablate_memory_class_1024_voc_200ep", ["train.batch_size=8"])
    scale_memory_window(ablation, DistInfo(rank=0, world_size=1, local_rank=0, device=None))
    assert ablation.method.options["window"] == 128
    assert load_config("baseline_moco_v2_voc_ade20k_100ep", []).method.window_reference_batch == 0  # no window
    baseline = load_config("demo", ["method.name=supervised_ce", "method.options={}"])  # as the studies switch
    scale_memory_window(baseline, DistInfo(rank=0, world_size=1, local_rank=0, device=None))
    assert baseline.method.window_reference_batch == 0 and "window" not in baseline.method.options
