"""fastrepulse.model_metrics on randomly initialised networks: shapes, grouping, identical and distinct images,
loading errors, and the CLIP score against the model's own embeddings. Parity with torchvision, pytorch-fid and
lpips runs only where those import (torchvision's PyPI wheels need a CUDA torch)."""

from __future__ import annotations

import functools
import importlib
import math
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from fastrepulse import model_metrics as mm
from fastrepulse.testbed.text import clip_tokenizer


def _images(count: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """Random 8-bit images as floats in [0, 1], so that their PIL versions hold the same values."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, *size), generator=generator) / 255.0


def _pil(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray((x * 255).round().byte().permute(1, 2, 0).numpy()) for x in images]


@functools.cache
def _inception_state() -> dict[str, torch.Tensor]:
    """A seeded random InceptionV3 state dict with the classifier torchvision's weight file carries.

    Convolutions get He init: PyTorch's default shrinks activations layer by layer into denormals (slow).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = mm.InceptionV3()
        for module in network.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        return {**network.state_dict(), "fc.weight": torch.randn(1000, 2048), "fc.bias": torch.zeros(1000)}


@functools.cache
def _lpips_weights(net: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Seeded random torchvision-style backbone and lpips-style linear weights (non-negative, as trained)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        network = mm.LPIPS(net)
        backbone = {f"features.{k}": v for k, v in network.features.state_dict().items()}
        backbone["classifier.1.weight"] = torch.randn(8, 8)  # torchvision's files carry the classifier too
        widths = mm._LPIPS_WIDTHS[net]
        linear = {f"lin{k}.model.1.weight": torch.rand(1, w, 1, 1) for k, w in enumerate(widths)}
    return backbone, linear


# -- Inception Vendi -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inception_run(tmp_path_factory) -> dict:
    """One pass of 4 images (2 groups of 2: two copies of one image, then two distinct ones) through a network
    loaded from a file; the features inception_vendi used are recorded on the way (the forward pass is slow)."""
    path = tmp_path_factory.mktemp("inception") / "inception_v3.pth"
    torch.save(_inception_state(), path)
    network = mm.load_inception(path)
    a, b, c = _images(3, (48, 64), seed=0)
    c = c * 0.3  # darker, so the two distinct images differ in more than their noise
    recorded = []
    original = mm.inception_features

    def recording(*args, **kwargs) -> torch.Tensor:
        recorded.append(original(*args, **kwargs))
        return recorded[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mm, "inception_features", recording)
        scores = mm.inception_vendi(torch.stack([a, a, b, c]), group_size=2, network=network)
    return {"network": network, "scores": scores, "features": recorded[0]}


def test_inception_vendi_groups_identical_and_distinct(inception_run):
    scores, features = inception_run["scores"], inception_run["features"]
    assert features.shape == (4, 2048) and features.dtype == torch.float32
    assert torch.isfinite(features).all() and features.abs().sum() > 0
    assert torch.allclose(features[0], features[1], rtol=1e-5, atol=0)
    assert scores.shape == (2,) and scores.dtype == torch.float64
    # group g is images 2g, 2g + 1: group 0 holds the two copies (interleaved groups would mix them)
    assert scores[0].item() == pytest.approx(1.0, abs=1e-6)
    # two samples at cosine c: rho = K / 2 has eigenvalues (1 + c) / 2 and (1 - c) / 2, the score is exp(entropy)
    cosine = torch.nn.functional.cosine_similarity(features[2].double(), features[3].double(), dim=0).item()
    lam = [(1 + cosine) / 2, (1 - cosine) / 2]
    assert scores[1].item() == pytest.approx(math.exp(-sum(value * math.log(value) for value in lam)), rel=1e-9)
    assert scores[1].item() > 1.01


def test_inception_vendi_checks_group_size_before_the_network(inception_run):
    with pytest.raises(ValueError, match="group_size 3 does not divide the number of images 4"):
        mm.inception_vendi(torch.zeros(4, 3, 8, 8), group_size=3, network=inception_run["network"])


def test_load_inception_variants():
    assert mm.load_inception(_inception_state()).variant == "torchvision"
    fid_classifier = {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}  # pytorch-fid's file
    fid = mm.load_inception({**_inception_state(), **fid_classifier, "AuxLogits.fc.weight": torch.zeros(1)})
    assert fid.variant == "fid" and not fid.training  # the auxiliary head is dropped


def test_load_inception_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no weight file at"):
        mm.load_inception(tmp_path / "missing.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        mm.load_inception(tmp_path / "list.pth")
    state = _inception_state()
    with pytest.raises(ValueError, match="no fc.weight.*inception_v3_google-0cc3c7bd.pth.*pt_inception"):
        mm.load_inception({k: v for k, v in state.items() if not k.startswith("fc.")})
    with pytest.raises(ValueError, match=r"fc.weight of shape \(10, 2048\)"):
        mm.load_inception({**state, "fc.weight": torch.zeros(10, 2048)})
    with pytest.raises(ValueError, match=r"missing \['Mixed_7c.branch_pool.conv.weight'\] \(1\); expected an Incep"):
        mm.load_inception({k: v for k, v in state.items() if k != "Mixed_7c.branch_pool.conv.weight"})
    with pytest.raises(ValueError, match=r"unexpected \['extra'\].*wrong shape \['Conv2d_1a_3x3.conv.weight'\]"):
        mm.load_inception({**state, "extra": torch.zeros(1), "Conv2d_1a_3x3.conv.weight": torch.zeros(1)})
    with pytest.raises(TypeError, match="path to a weight file or a state dict"):
        mm.load_inception(3)


# -- LPIPS -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alex(tmp_path_factory) -> mm.LPIPS:
    directory = tmp_path_factory.mktemp("lpips")
    backbone, linear = _lpips_weights("alex")
    torch.save(backbone, directory / "alexnet.pth")
    torch.save(linear, directory / "alex.pth")
    return mm.load_lpips(directory / "alexnet.pth", directory / "alex.pth", net="alex")


@pytest.mark.parametrize(("net", "size"), [("alex", 48), ("vgg", 16)])
def test_pairwise_lpips_groups(net: str, size: int, alex: mm.LPIPS):
    network = alex if net == "alex" else mm.load_lpips(*_lpips_weights("vgg"), net="vgg")
    a, b, c, d = _images(4, (size, size), seed=2)
    images = torch.stack([a, a, a, b, c, d])
    result = mm.pairwise_lpips(images, group_size=3, network=network)
    assert result.shape == (2,) and result.dtype == torch.float64
    assert result[0].item() == pytest.approx(0.0, abs=1e-6)  # group 0 is images 0..2, three copies
    pairs = network(torch.stack([b, b, c]), torch.stack([c, d, d])).double()  # group 1, pair by pair
    assert result[1].item() == pytest.approx(pairs.mean().item(), rel=1e-5) and result[1] > 1e-3


def test_pairwise_lpips_takes_pil_images_as_tensors(alex: mm.LPIPS):
    images = _images(4, (40, 48), seed=3)
    expected = mm.pairwise_lpips(images, group_size=2, network=alex)
    torch.testing.assert_close(mm.pairwise_lpips(_pil(images), group_size=2, network=alex), expected)


def test_pairwise_lpips_input_errors(alex: mm.LPIPS):
    images = _images(4, (32, 32), seed=4)
    with pytest.raises(ValueError, match="group_size must be an int >= 2"):
        mm.pairwise_lpips(images, group_size=1, network=alex)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        mm.pairwise_lpips(images * 2, group_size=2, network=alex)
    with pytest.raises(ValueError, match="float tensor \\[N, 3, H, W\\]"):
        mm.pairwise_lpips(images[:, :1], group_size=2, network=alex)
    with pytest.raises(ValueError, match="one size"):
        mm.pairwise_lpips(_pil(images[:2]) + _pil(_images(2, (32, 40), seed=5)), group_size=2, network=alex)
    with pytest.raises(TypeError, match="PIL images or a float tensor"):
        mm.pairwise_lpips(["a.png", "b.png"], group_size=2, network=alex)


def test_load_lpips_errors():
    backbone, linear = _lpips_weights("alex")
    with pytest.raises(ValueError, match="wrong shape.*expected torchvision's vgg16 state dict"):
        mm.load_lpips(backbone, _lpips_weights("vgg")[1], net="vgg")
    with pytest.raises(ValueError, match="no lin\\*.model.1.weight entries; pass lpips' weights/v0.1/alex.pth"):
        mm.load_lpips(backbone, {"other": torch.zeros(1)}, net="alex")
    with pytest.raises(ValueError, match="missing \\['lin4.1.weight'\\]"):
        mm.load_lpips(backbone, {k: v for k, v in linear.items() if not k.startswith("lin4")}, net="alex")
    with pytest.raises(ValueError, match="net must be one of"):
        mm.LPIPS("squeeze")


# -- CLIP score and ImageReward --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIPModel and its processor (offline character-level tokenizer), saved as from a hub."""
    directory = tmp_path_factory.mktemp("clip")
    tokenizer = clip_tokenizer(77)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={**small, "vocab_size": eos + 1, "max_position_embeddings": 77, "bos_token_id": eos - 1,
                     "eos_token_id": eos, "pad_token_id": eos},
        vision_config={**small, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)  # a model whose cosines here fall on both sides of 0
        CLIPModel(config).save_pretrained(directory)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def test_clip_score_matches_the_model_embeddings(clip_dir: Path):
    images = _images(4, (40, 48), seed=6)
    prompts = ["a bear", "a bear", "a red fox in the snow", "x"]
    scores = mm.clip_score(images, prompts, clip_dir)
    assert scores.shape == (4,) and scores.dtype == torch.float64

    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        pixels = processor(images=_pil(images), return_tensors="pt")["pixel_values"]
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        text = processor(text=prompts, return_tensors="pt", padding=True)
        text = model.text_projection(model.text_model(**text).pooler_output)
    cosine = torch.nn.functional.cosine_similarity(image.double(), text.double(), dim=-1)
    torch.testing.assert_close(scores, (100 * cosine).clamp_min(0), rtol=1e-5, atol=1e-4)
    assert (scores == 0).any() and (scores > 0).any()  # negative cosines are clipped, positive ones kept

    torch.testing.assert_close(mm.clip_score(_pil(images), prompts, (model, processor)), scores, rtol=0, atol=0)


def test_clip_score_errors(clip_dir: Path, tmp_path: Path):
    images = _images(2, (32, 32), seed=7)
    with pytest.raises(FileNotFoundError, match="local directory with a CLIPModel and its CLIPProcessor"):
        mm.clip_score(images, ["a", "b"], tmp_path / "missing")
    with pytest.raises(ValueError, match="one string per image \\(2\\)"):
        mm.clip_score(images, ["a"], clip_dir)
    with pytest.raises(ValueError, match="one string per image"):
        mm.clip_score(images, "ab", clip_dir)


def test_image_reward_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ImageReward", None)  # makes the import fail even where it is installed
    with pytest.raises(ImportError, match='pip install image-reward "transformers<5"'):
        mm.image_reward(_images(1, (8, 8), seed=8), ["a"], "ImageReward.pt", "med_config.json")


# -- parity with the reference packages, where they import -----------------------------------------------


def _import_or_skip(name: str):
    try:
        return importlib.import_module(name)
    except (ImportError, OSError, RuntimeError) as error:  # a CUDA torchvision wheel on a CPU torch: RuntimeError
        pytest.skip(f"{name} does not import here: {error}")


def test_inception_matches_torchvision():
    models = _import_or_skip("torchvision.models")
    reference = models.inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True).eval()
    network = mm.load_inception(reference.state_dict())
    reference.fc = nn.Identity()
    images = _images(2, (299, 299), seed=9)
    with torch.no_grad():
        torch.testing.assert_close(network(images), reference(images), rtol=1e-4, atol=1e-5)


def test_lpips_matches_the_lpips_package():
    lpips = _import_or_skip("lpips")
    models = _import_or_skip("torchvision.models")
    backbone = models.alexnet(weights=None).state_dict()
    reference = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    for part in (reference.net.slice1, reference.net.slice2, reference.net.slice3, reference.net.slice4,
                 reference.net.slice5):  # fmt: skip
        for index, layer in part.named_children():
            if isinstance(layer, nn.Conv2d):
                layer.load_state_dict({"weight": backbone[f"features.{index}.weight"],
                                       "bias": backbone[f"features.{index}.bias"]})  # fmt: skip
    linear = {k: v for k, v in reference.state_dict().items() if k.startswith("lin")}
    network = mm.load_lpips(backbone, linear, net="alex")
    a, b = _images(2, (64, 64), seed=10), _images(2, (64, 64), seed=11)
    with torch.no_grad():
        torch.testing.assert_close(network(a, b), reference(a, b, normalize=True).flatten(), rtol=1e-5, atol=1e-6)
