"""Metrics that need a pretrained network: Inception Vendi and pairwise LPIPS within groups, CLIP score, ImageReward.

The user provides the weights; nothing is downloaded. Images are a list of PIL images or a float tensor
[N, 3, H, W] in [0, 1]; group g of size B is images ``g * B`` to ``(g + 1) * B - 1`` (one prompt's images,
as `fastrepulse.repel` and the pipelines lay them out), and a per-group metric returns one value per group.

- `inception_vendi`: `fastrepulse.eval.vendi` (cosine kernel) of each group's InceptionV3 2048-d pool
  features, the protocol of the Vendi score's own package (``vendi_score.image_utils``) and of the paper.
- `pairwise_lpips`: mean LPIPS (Zhang et al. 2018) over the B (B - 1) / 2 pairs of each group.
- `clip_score`: ``max(100 cos(image, prompt), 0)`` with a `transformers` CLIP model from a local directory.
- `image_reward`: ImageReward (Xu et al. 2023) through its own package, an optional import (untested here).

The InceptionV3, AlexNet and VGG16 networks are written out in plain torch, with torchvision's parameter
names so that torchvision's, pytorch-fid's and lpips' weight files load as they are: torchvision's PyPI
wheels for torch 2.13 are CUDA builds that do not import against a CPU torch, and every packaged
implementation (torchvision, lpips, pytorch-fid, torch-fidelity, torchmetrics' LPIPS and FID, piqa, timm)
imports torchvision. docs/metrics.md says where the weight files come from.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fastrepulse.eval import vendi

Images = Sequence[Image.Image] | torch.Tensor
Weights = str | os.PathLike | Mapping[str, torch.Tensor]
LpipsNet = Literal["alex", "vgg"]

INCEPTION_SIZE = 299
FEATURES = 2048
# rows of fc.weight in each Inception weight file: which variant of the network and its input it is
INCEPTION_VARIANTS = {1000: "torchvision", 1008: "fid"}


# -- InceptionV3 ------------------------------------------------------------------------------------------


class _Conv(nn.Module):
    """Conv (no bias), batch norm (eps 1e-3), ReLU: torchvision's BasicConv2d."""

    def __init__(
        self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding: int | tuple[int, int] = 0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor, fid: bool) -> torch.Tensor:
    # pytorch-fid's blocks (TensorFlow's graph) leave the padding out of the average; torchvision's count it
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=not fid)


class _InceptionA(nn.Module):
    def __init__(self, cin: int, pool: int, fid: bool) -> None:
        super().__init__()
        self.fid = fid
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1 = _Conv(cin, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x, self.fid))], 1)


class _InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class _InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int, fid: bool) -> None:
        super().__init__()
        self.fid = fid
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1 = _Conv(cin, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(cin, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x, self.fid))], 1)


class _InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _Conv(cin, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class _InceptionE(nn.Module):
    def __init__(self, cin: int, pool: Literal["avg", "avg_fid", "max"]) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(cin, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else _avg_pool(x, self.pool == "avg_fid")
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(d),
                self.branch3x3dbl_3b(d),
                self.branch_pool(pool),
            ],
            1,
        )


class InceptionV3(nn.Module):
    """InceptionV3 up to its 2048-d average pool, with torchvision's parameter names.

    ``variant="torchvision"``: torchvision's ``inception_v3`` with ``transform_input=True``, as the Vendi
    score's package runs it on [0, 1] images (its ImageNet weights, ``inception_v3_google-0cc3c7bd.pth``).
    ``variant="fid"``: pytorch-fid's port of TensorFlow's FID network (``pt_inception-2015-12-05-6726825d.pth``):
    average pools without the padding, a max pool in the last block, input scaled to [-1, 1].
    Takes [N, 3, 299, 299] in [0, 1]; returns [N, 2048].
    """

    def __init__(self, variant: Literal["torchvision", "fid"] = "torchvision") -> None:
        super().__init__()
        if variant not in INCEPTION_VARIANTS.values():
            raise ValueError(f"variant must be one of {tuple(INCEPTION_VARIANTS.values())}, got {variant!r}")
        self.variant = variant
        fid = variant == "fid"
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _InceptionA(192, 32, fid)
        self.Mixed_5c = _InceptionA(256, 64, fid)
        self.Mixed_5d = _InceptionA(288, 64, fid)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, 128, fid)
        self.Mixed_6c = _InceptionC(768, 160, fid)
        self.Mixed_6d = _InceptionC(768, 160, fid)
        self.Mixed_6e = _InceptionC(768, 192, fid)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280, "avg_fid" if fid else "avg")
        self.Mixed_7c = _InceptionE(2048, "max" if fid else "avg")  # pytorch-fid's FIDInceptionE_2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.variant == "fid":
            x = 2.0 * x - 1.0
        else:  # transform_input: the ImageNet normalisation undone into [-1, 1] scale, as torchvision does it
            mean = x.new_tensor([0.485, 0.456, 0.406])[:, None, None]
            std = x.new_tensor([0.229, 0.224, 0.225])[:, None, None]
            x = x * (std / 0.5) + (mean - 0.5) / 0.5
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))


def load_inception(weights: Weights) -> InceptionV3:
    """InceptionV3 feature network from a weight file or state dict; the variant follows from its classifier.

    Accepted: torchvision's ImageNet weights (fc of 1000 classes, the Vendi protocol) or pytorch-fid's FID
    weights (fc of 1008 classes). The classifier and the auxiliary head are not used and are dropped.
    """
    state = _state_dict(weights, "weights")
    fc = state.get("fc.weight")
    if fc is None or fc.shape[0] not in INCEPTION_VARIANTS:
        got = "no fc.weight" if fc is None else f"fc.weight of shape {tuple(fc.shape)}"
        raise ValueError(
            f"weights are not an InceptionV3 state dict ({got}); pass torchvision's inception_v3_google-0cc3c7bd.pth "
            "(fc.weight [1000, 2048]) or pytorch-fid's pt_inception-2015-12-05-6726825d.pth (fc.weight [1008, 2048])"
        )
    with torch.device("meta"):  # no random init of the 22M parameters that the weights replace
        network = InceptionV3(INCEPTION_VARIANTS[fc.shape[0]])
    body = {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}
    _load(network, body, "weights", "an InceptionV3 state dict with torchvision's parameter names")
    return network.eval()


@torch.no_grad()
def inception_features(images: Images, network: InceptionV3 | Weights, batch_size: int = 32) -> torch.Tensor:
    """InceptionV3 2048-d pool features [N, 2048] (float32, CPU) of N images.

    Each image is resized as its variant's reference code does: torchvision's (Vendi) shortest side to 299
    (bilinear, antialiased) and a centre crop; pytorch-fid's straight to 299 x 299 (bilinear).

    Args:
        images: N PIL images or a float tensor [N, 3, H, W] in [0, 1].
        network: from `load_inception`, or what it takes (a weight file or state dict).
        batch_size: images per forward pass.
    """
    if not isinstance(network, InceptionV3):
        network = load_inception(network)
    network.eval()
    device = next(network.parameters()).device
    resize = _resize_crop if network.variant == "torchvision" else _resize_square
    batch = [resize(image, INCEPTION_SIZE) for image in _image_list(images)]
    out = [network(torch.stack(batch[i : i + batch_size]).to(device)) for i in range(0, len(batch), batch_size)]
    return torch.cat(out).float().cpu()


def inception_vendi(
    images: Images, group_size: int, network: InceptionV3 | Weights, q: float = 1.0, batch_size: int = 32
) -> torch.Tensor:
    """Vendi score of order q (cosine kernel) of each group's Inception features: [N / group_size] float64.

    The paper's diversity protocol: a prompt's images form a group; average the result over prompts.
    """
    groups = _group_count(len(images), group_size)  # before the forward pass, which is the slow part
    features = inception_features(images, network, batch_size)
    return vendi(features.view(groups, group_size, -1), q=q)


# -- LPIPS ------------------------------------------------------------------------------------------------

# lpips' input scaling (applied to [-1, 1] images), the layers it reads and their widths
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_LPIPS_TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}  # indices of the ReLUs in `features`
_LPIPS_WIDTHS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}


def _alexnet_features() -> nn.Sequential:
    """torchvision's ``alexnet().features``."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
    )


def _vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features``."""
    layers: list[nn.Module] = []
    cin = 3
    for width, convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(convs):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU()]
            cin = width
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """LPIPS v0.1 (the lpips package's ``LPIPS(net=...)``) with torchvision's and lpips' parameter names.

    `features` gives each image's unit-normalised activations at the five layers; `distance` the LPIPS
    distance of two such feature lists: per layer, the learned weighting of the squared difference,
    averaged over space, summed over layers. Images are [N, 3, H, W] in [0, 1].
    """

    def __init__(self, net: LpipsNet = "alex") -> None:
        super().__init__()
        if net not in _LPIPS_TAPS:
            raise ValueError(f"net must be one of {tuple(_LPIPS_TAPS)}, got {net!r}")
        self.net = net
        self.features = _alexnet_features() if net == "alex" else _vgg16_features()
        for k, width in enumerate(_LPIPS_WIDTHS[net]):  # lpips' NetLinLayer: Dropout, then this 1x1 conv
            self.add_module(f"lin{k}", nn.Sequential(nn.Dropout(), nn.Conv2d(width, 1, 1, bias=False)))

    def layer_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        shift, scale = (images.new_tensor(v)[:, None, None] for v in (_LPIPS_SHIFT, _LPIPS_SCALE))
        x = (2.0 * images - 1.0 - shift) / scale
        taps, out = _LPIPS_TAPS[self.net], []
        for index, layer in enumerate(self.features[: taps[-1] + 1]):
            x = layer(x)
            if index in taps:
                out.append(x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def distance(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
        lins = [getattr(self, f"lin{k}") for k in range(len(a))]
        return sum(lin((fa - fb).square()).mean((1, 2, 3)) for lin, fa, fb in zip(lins, a, b, strict=True))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS distance [N] between images a[i] and b[i]."""
        return self.distance(self.layer_features(a), self.layer_features(b))


def load_lpips(backbone: Weights, linear: Weights, net: LpipsNet = "alex") -> LPIPS:
    """LPIPS from torchvision's backbone weights (``alexnet``/``vgg16``; the classifier is dropped) and
    lpips' linear-layer weights (``lpips/weights/v0.1/{alex,vgg}.pth`` in the lpips package)."""
    with torch.device("meta"):  # no random init of what the weights replace
        network = LPIPS(net)
    layers = {k: v for k, v in _state_dict(backbone, "backbone").items() if k.startswith("features.")}
    expected = f"torchvision's {'alexnet' if net == 'alex' else 'vgg16'} state dict (features.*)"
    lins = {k: v for k, v in _state_dict(linear, "linear").items() if re.fullmatch(r"lin\d\.model\.1\.weight", k)}
    if not lins:
        raise ValueError(f"linear has no lin*.model.1.weight entries; pass lpips' weights/v0.1/{net}.pth")
    _load(network, {**layers, **{k.replace(".model.", ".", 1): v for k, v in lins.items()}}, "weights", expected)
    return network.eval()


@torch.no_grad()
def pairwise_lpips(images: Images, group_size: int, network: LPIPS) -> torch.Tensor:
    """Mean LPIPS over the pairs of each group: [N / group_size] float64; 0 for a group of identical images.

    Every image goes through the network once; the B (B - 1) / 2 pairs of a group are formed on the features.
    All images must share one size (LPIPS compares them as they are); group_size >= 2.
    """
    batch = _image_batch(images)
    groups = _group_count(batch.shape[0], group_size, minimum=2)
    network.eval()
    device = next(network.parameters()).device
    features = network.layer_features(batch.to(device))
    i, j = torch.triu_indices(group_size, group_size, offset=1)
    starts = torch.arange(groups)[:, None] * group_size
    a, b = (starts + i).flatten().to(device), (starts + j).flatten().to(device)
    distances = network.distance([f[a] for f in features], [f[b] for f in features])
    return distances.double().cpu().view(groups, -1).mean(1)


# -- text-image scores ------------------------------------------------------------------------------------


@torch.no_grad()
def clip_score(images: Images, prompts: Sequence[str], model: str | os.PathLike | tuple) -> torch.Tensor:
    """CLIP score of each image against its prompt: ``max(100 cos(E_image, E_text), 0)``, [N] float64.

    Args:
        images: N PIL images or [N, 3, H, W] in [0, 1] (quantised to 8 bits, as a saved image is).
        prompts: N prompts, one per image (repeat a group's prompt for each of its images).
        model: a local directory holding a `transformers` CLIPModel and its CLIPProcessor (both
            ``save_pretrained`` there, e.g. a download of openai/clip-vit-large-patch14), or the
            ``(model, processor)`` pair already loaded.
    """
    from transformers import CLIPModel, CLIPProcessor

    pil = _pil_list(images)
    if isinstance(prompts, str) or len(prompts) != len(pil):
        raise ValueError(f"prompts must be a sequence of one string per image ({len(pil)}), got {prompts!r}")
    if isinstance(model, tuple):
        clip, processor = model
    else:
        if not os.path.isdir(model):
            raise FileNotFoundError(
                f"model must be a local directory with a CLIPModel and its CLIPProcessor (save_pretrained), "
                f"got {model!r}"
            )
        clip, processor = CLIPModel.from_pretrained(model), CLIPProcessor.from_pretrained(model)
    clip.eval()
    device = next(clip.parameters()).device
    inputs = processor(text=list(prompts), images=pil, return_tensors="pt", padding=True, truncation=True)
    outputs = clip(**{k: v.to(device) for k, v in inputs.items()})
    cosine = (outputs.image_embeds.double() * outputs.text_embeds.double()).sum(-1)  # both unit vectors
    return (100.0 * cosine).clamp_min(0.0).cpu()


def image_reward(
    images: Images, prompts: Sequence[str], checkpoint: str | os.PathLike, med_config: str | os.PathLike
) -> torch.Tensor:
    """ImageReward score of each image against its prompt, [N] float64, through the ``image-reward`` package.

    Untested here: image-reward 1.5 pins timm 0.6.13 and fairscale 0.4.13, imports helpers that transformers
    5 removed, and loads the bert-base-uncased tokenizer from the Hugging Face hub (cache it first). Run it
    in an environment with ``pip install image-reward "transformers<5"``.

    Args:
        checkpoint: ImageReward.pt (THUDM/ImageReward on the Hugging Face hub).
        med_config: med_config.json from the same repository.
    """
    try:
        import ImageReward as reward
    except ImportError as error:
        raise ImportError(
            "image_reward needs the image-reward package and transformers<5: "
            'pip install image-reward "transformers<5" (in an environment of its own; see docs/metrics.md)'
        ) from error
    pil = _pil_list(images)
    if isinstance(prompts, str) or len(prompts) != len(pil):
        raise ValueError(f"prompts must be a sequence of one string per image ({len(pil)}), got {prompts!r}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = reward.load(os.fspath(checkpoint), device=device, med_config=os.fspath(med_config))
    with torch.no_grad():
        return torch.tensor([model.score(p, image) for p, image in zip(prompts, pil, strict=True)], dtype=torch.float64)


# -- helpers ----------------------------------------------------------------------------------------------


def _state_dict(weights: Weights, name: str) -> dict[str, torch.Tensor]:
    """A state dict as given, or read from a file (torch.save format, tensors only)."""
    if isinstance(weights, Mapping):
        return dict(weights)
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path to a weight file or a state dict, got {type(weights).__name__}")
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{name}: no weight file at {os.fspath(weights)!r}; see docs/metrics.md for the files")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{name}: {os.fspath(weights)!r} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def _load(network: nn.Module, state: dict[str, torch.Tensor], name: str, expected: str) -> None:
    """Load strictly, or say which keys are missing, unexpected or of the wrong shape and what to pass."""
    own = network.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    shapes = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = [
            f"{label} {keys[:3]}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", sorted(shapes)))
            if keys
        ]
        raise ValueError(f"{name} do not fit: {'; '.join(parts)}; expected {expected}")
    network.to_empty(device="cpu").load_state_dict(state)


def _image_list(images: Images) -> list[torch.Tensor]:
    """Each image as a float32 tensor [3, H, W] in [0, 1]."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3 or not images.dtype.is_floating_point:
            raise ValueError(f"images must be a float tensor [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("images is empty")
        x = images.detach().float().cpu()
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ValueError("images must be finite and in [0, 1]")
        return list(x)
    if not images or not all(isinstance(image, Image.Image) for image in images):
        raise TypeError("images must be a non-empty sequence of PIL images or a float tensor [N, 3, H, W]")
    return [torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
            for image in images]  # fmt: skip


def _image_batch(images: Images) -> torch.Tensor:
    listed = _image_list(images)
    sizes = sorted({tuple(image.shape[1:]) for image in listed})
    if len(sizes) > 1:
        raise ValueError(f"images must all have one size, got (H, W) sizes {sizes}")
    return torch.stack(listed)


def _pil_list(images: Images) -> list[Image.Image]:
    if isinstance(images, torch.Tensor):
        pixels = [(image * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy() for image in _image_list(images)]
        return [Image.fromarray(p) for p in pixels]
    _image_list(images)  # validates
    return [image.convert("RGB") for image in images]


def _resize_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """Shortest side to `size` (bilinear, antialiased), then the centre `size` x `size` crop, as torchvision's
    ``Resize(size)`` and ``CenterCrop(size)`` compute them."""
    height, width = image.shape[1:]
    short, long = min(height, width), max(height, width)
    new_long = int(size * long / short)
    new = (size, new_long) if height <= width else (new_long, size)
    x = F.interpolate(image[None], size=new, mode="bilinear", align_corners=False, antialias=True)[0]
    top, left = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    return x[:, top : top + size, left : left + size]


def _resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def _group_count(count: int, group_size: int, minimum: int = 1) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < minimum:
        raise ValueError(f"group_size must be an int >= {minimum}, got {group_size!r}")
    if count % group_size:
        raise ValueError(f"group_size {group_size} does not divide the number of images {count}")
    return count // group_size
