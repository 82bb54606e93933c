"""The testbed's real digits and the shipped classifier that judges generated ones."""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fastrepulse.testbed import classify, digits
from fastrepulse.testbed.classifier import FEATURES, to_grid
from fastrepulse.testbed.digits import split


def test_digits_are_the_scikit_learn_scans() -> None:
    images, labels = digits()
    assert images.shape == (1797, 8, 8) and images.dtype == torch.float32
    assert images.min() == 0 and images.max() == 1
    assert labels.unique().tolist() == list(range(10))


def test_split_is_seeded_stratified_and_disjoint() -> None:
    _, labels = digits()
    train, test = split(labels)
    assert set(train.tolist()).isdisjoint(test.tolist()) and len(train) + len(test) == len(labels)
    assert len(test) == 450  # the held-out scans bench/train_classifier.py and docs/diversity.md report on
    torch.manual_seed(1)  # another global state: the split draws from its own generator, seeded by `seed`
    assert torch.equal(split(labels)[1], test) and not torch.equal(split(labels, seed=1)[1], test)
    shares = torch.bincount(labels[test], minlength=10) / torch.bincount(labels, minlength=10)
    assert (shares - 0.25).abs().max() < 0.01


def test_shipped_classifier_is_accurate_on_held_out_scans() -> None:
    images, labels = digits()
    _, test = split(labels)
    predicted, features = classify(images[test])
    assert (predicted == labels[test]).float().mean() >= 0.98  # bench/train_classifier.py printed 0.9867
    assert features.shape == (len(test), FEATURES) and predicted.dtype == torch.int64


def test_any_size_and_format_is_judged_on_the_scan_grid() -> None:
    images, _ = digits()
    scans = images[:20]
    large = F.interpolate(scans.unsqueeze(1), scale_factor=4, mode="nearest")  # [20, 1, 32, 32]
    rgb = large.expand(-1, 3, -1, -1)
    pil = [Image.fromarray((image[0] * 255).round().byte().numpy()) for image in large]
    assert torch.equal(to_grid(large), scans.unsqueeze(1))  # area averaging undoes nearest upsampling
    expected = classify(scans)
    for other in (large, rgb, large.squeeze(1)):
        assert torch.equal(classify(other)[0], expected[0])
        torch.testing.assert_close(classify(other)[1], expected[1])
    assert torch.equal(classify(pil)[0], expected[0])  # 8-bit rounding: same labels
    torch.testing.assert_close(classify(pil)[1], expected[1], atol=0.05, rtol=0.05)


@pytest.mark.parametrize(
    "images",
    [torch.zeros(4, 8, 8, dtype=torch.uint8), torch.zeros(8, 8), torch.zeros(0, 8, 8), [], ["not an image"]],
    ids=["integer", "2-d", "empty", "empty-list", "not-pil"],
)
def test_bad_images_are_refused(images) -> None:
    with pytest.raises(ValueError, match="images must be"):
        classify(images)
