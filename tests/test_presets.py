"""The family presets: the documented rule from the paper's Flux-dev setting, on sizes read back from diffusers."""

from __future__ import annotations

import inspect

import diffusers
import pytest

from fastrepulse.config import FAMILY_SIZES, FLUX_DEV_TEXT, PRESETS, preset_scale

DENOISERS = {
    "qwen-image": ("QwenImageTransformer2DModel", "QwenImagePipeline"),
    "flux2-dev": ("Flux2Transformer2DModel", "Flux2Pipeline"),
    "chroma": ("ChromaTransformer2DModel", "ChromaPipeline"),
    "longcat-image": ("LongCatImageTransformer2DModel", "LongCatImagePipeline"),
    "ovis-image": ("OvisImageTransformer2DModel", "OvisImagePipeline"),
    "bria": ("BriaTransformer2DModel", "BriaPipeline"),
    "z-image": ("ZImageTransformer2DModel", "ZImagePipeline"),
    "hidream": ("HiDreamImageTransformer2DModel", "HiDreamImagePipeline"),
    "lumina2": ("Lumina2Transformer2DModel", "Lumina2Pipeline"),
    "krea2": ("Krea2Transformer2DModel", "Krea2Pipeline"),
    "hunyuan-image": ("HunyuanImageTransformer2DModel", "HunyuanImagePipeline"),
    "cogview4": ("CogView4Transformer2DModel", "CogView4Pipeline"),
    "auraflow": ("AuraFlowTransformer2DModel", "AuraFlowPipeline"),
}


def _defaults(function) -> dict:
    parameters = inspect.signature(function).parameters.items()
    return {
        name: parameter.default for name, parameter in parameters if parameter.default is not inspect.Parameter.empty
    }


@pytest.mark.parametrize("preset", sorted(DENOISERS))
def test_each_family_preset_is_the_rule_at_that_familys_size(preset: str) -> None:
    """Width and default steps as diffusers defines the released model; scale by the |c|^2 rule from flux-dev."""
    denoiser, pipeline = (getattr(diffusers, name) for name in DENOISERS[preset])
    model = _defaults(denoiser.__init__)
    width = model.get("dim") or model.get("hidden_size") or model["num_attention_heads"] * model["attention_head_dim"]
    tokens, table_width, steps = FAMILY_SIZES[preset]
    assert table_width == width
    assert steps == _defaults(pipeline.__call__)["num_inference_steps"] or preset == "z-image-turbo"
    config = PRESETS[preset]
    assert config.scale == pytest.approx(2e8 * tokens * width / (512 * 3072), rel=0.05)
    assert config.steps == max(1, round(steps / 20)) and config.iterations == 50


def test_the_rule_keeps_flux_dev_and_grows_with_the_squared_norm() -> None:
    assert preset_scale(*FLUX_DEV_TEXT) == PRESETS["flux-dev"].scale
    assert preset_scale(512, 6144) == 2 * PRESETS["flux-dev"].scale
    assert preset_scale(128, 3072) == PRESETS["flux-dev"].scale / 4


def test_z_image_turbo_repels_its_first_step() -> None:
    assert PRESETS["z-image-turbo"].steps == 1 and PRESETS["z-image-turbo"].scale == PRESETS["z-image"].scale
