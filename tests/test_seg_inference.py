"""Sliding-window and flip inference against whole-image inference and a hand-made window grid."""

import pytest
import torch
from torch import nn

from training.seg.inference import predict_logits, slide_inference
from training.seg.models import SegModelConfig, build_segmentation_model


class Pointwise(nn.Module):
    """A 1x1 conv: translation-equivariant with no receptive field, so windows cannot change its output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, image):
        return {"out": self.conv(image)}


class WindowMean(nn.Module):
    """Outputs the mean of its input window everywhere: the result depends on exactly which windows are used."""

    def forward(self, image):
        return {"out": image.mean(dim=(2, 3), keepdim=True).expand_as(image).clone()}


def test_slide_equals_whole_for_pointwise_model():
    image = torch.randn(2, 3, 13, 17)
    model = Pointwise()
    whole = predict_logits(model, image, mode="whole")
    slide = predict_logits(model, image, mode="slide", crop_size=(5, 6), stride=(3, 4))
    assert torch.allclose(whole, slide, atol=1e-6)


def test_slide_equals_whole_when_crop_covers_image():
    torch.manual_seed(0)
    model = build_segmentation_model(
        SegModelConfig(head="fcn", head_channels=16), num_classes=3, arch="resnet18"
    ).eval()
    image = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        whole = predict_logits(model, image, mode="whole")
        slide = predict_logits(model, image, mode="slide", crop_size=(64, 64), stride=(32, 32))
    assert torch.allclose(whole, slide, atol=1e-5)


def test_slide_window_grid_matches_mmseg():
    """H=5, crop 3, stride 2 -> row windows [0,3) and [2,5); W=4, crop 3, stride 2 -> [0,3) and [1,4)."""
    image = torch.arange(20.0).view(1, 1, 5, 4)
    rows, cols = [(0, 3), (2, 5)], [(0, 3), (1, 4)]
    total = torch.zeros(5, 4)
    count = torch.zeros(5, 4)
    for y1, y2 in rows:
        for x1, x2 in cols:
            total[y1:y2, x1:x2] += image[0, 0, y1:y2, x1:x2].mean()
            count[y1:y2, x1:x2] += 1
    result = slide_inference(WindowMean(), image, crop_size=(3, 3), stride=(2, 2))
    assert torch.allclose(result[0, 0], total / count)
    assert not torch.allclose(result[0, 0], image.mean().expand(5, 4))


def test_flip_averages_probabilities_and_resizes():
    image = torch.randn(1, 3, 8, 10)
    model = Pointwise()
    probs = predict_logits(model, image, flip=True)
    assert torch.allclose(probs, model(image)["out"].softmax(1), atol=1e-6)
    resized = predict_logits(model, image, flip=True, output_size=(16, 20))
    assert resized.shape == (1, 4, 16, 20)


def test_bad_mode_is_an_error():
    with pytest.raises(ValueError, match="mode 'tiles'"):
        predict_logits(Pointwise(), torch.zeros(1, 3, 4, 4), mode="tiles")
    with pytest.raises(ValueError, match="crop_size and stride"):
        predict_logits(Pointwise(), torch.zeros(1, 3, 4, 4), mode="slide")


def test_keep_ratio_test_resize_matches_mmseg_rescale():
    from training.seg.evaluation import keep_ratio_size

    assert keep_ratio_size(375, 500, [2048, 512]) == (512, 683)  # VOC image scaled up to short side 512
    assert keep_ratio_size(1024, 2048, [2048, 512]) == (512, 1024)  # long image bounded by the short side
    assert keep_ratio_size(1024, 2048, [2048, 1024]) == (1024, 2048)  # Cityscapes stays native
    assert keep_ratio_size(300, 4000, [2048, 512]) == (154, 2048)  # very wide image bounded by the long side
    assert keep_ratio_size(37, 41, []) == (37, 41)
