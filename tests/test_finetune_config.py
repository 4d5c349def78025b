"""Fine-tuning recipes, strict config checking and the MMSeg poly schedule."""

import pytest

from training.config import ConfigError
from training.seg.config import load_finetune_config
from training.seg.finetuning import poly_lr

DATASET_RECIPES = {
    "finetune_voc_aug": (40000, 16, [512, 512], "voc_aug:"),
    "finetune_ade20k": (80000, 16, [512, 512], "ade20k:"),
    "finetune_cityscapes": (40000, 8, [512, 1024], "cityscapes:"),
    "finetune_coco_stuff164k": (80000, 16, [512, 512], "coco_stuff164k:"),
}


@pytest.mark.parametrize("recipe", sorted(DATASET_RECIPES))
def test_dataset_recipes_follow_mmseg(recipe):
    iterations, batch, crop, spec_prefix = DATASET_RECIPES[recipe]
    config = load_finetune_config(recipe)
    assert (config.train.iterations, config.train.batch_size, config.data.crop_size) == (iterations, batch, crop)
    assert config.data.train.startswith(spec_prefix)
    assert (config.optim.lr, config.optim.momentum, config.optim.weight_decay) == (0.01, 0.9, 5e-4)
    assert (config.optim.power, config.optim.min_lr) == (0.9, 1e-4)
    assert config.model.head == "deeplabv3" and config.model.arch is None and not config.model.aux_head
    assert config.model.aspp_dilations == [1, 12, 24, 36] and config.model.head_channels == 512
    assert config.eval.mode == "whole" and not config.eval.flip


def test_default_recipe_is_synthetic():
    config = load_finetune_config()
    assert config.name == "finetune_synthetic" and config.data.train == "synthetic"


def test_overrides_are_typed_and_strict():
    config = load_finetune_config(
        "finetune_voc_aug", ["optim.lr=0.02", "model.head=fcn", "model.aux_head=true", "data.crop_size=[256, 256]"]
    )
    assert config.optim.lr == 0.02 and config.model.head == "fcn" and config.model.aux_head
    assert config.data.crop_size == [256, 256]
    with pytest.raises(ConfigError, match="model.heads"):
        load_finetune_config("finetune_voc_aug", ["model.heads=fcn"])
    with pytest.raises(ConfigError, match="train.iterations"):
        load_finetune_config("finetune_voc_aug", ["train.iterations=many"])
    with pytest.raises(ConfigError, match="eval.mode"):
        load_finetune_config("finetune_voc_aug", ["eval.mode=tiles"])
    assert load_finetune_config("finetune_voc_aug", []).data.photometric_on == "auto"
    with pytest.raises(ConfigError, match="data.photometric_on 'gpu'"):
        load_finetune_config("finetune_voc_aug", ["data.photometric_on=gpu"])


def test_unknown_key_in_recipe_file_names_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: finetune_voc_aug\noptim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"mine.yaml.*optim.learning_rate"):
        load_finetune_config(str(path))


def test_poly_lr_matches_mmseg_formula():
    assert poly_lr(0, 100, 0.01, 1e-4, 0.9) == pytest.approx(0.01)
    assert poly_lr(50, 100, 0.01, 1e-4, 0.9) == pytest.approx((0.01 - 1e-4) * 0.5**0.9 + 1e-4)
    assert poly_lr(100, 100, 0.01, 1e-4, 0.9) == pytest.approx(1e-4)
