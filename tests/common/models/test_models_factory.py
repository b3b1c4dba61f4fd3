"""Factory: tiny presets, deterministic init, gradients through both towers, save/load, no torchvision."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from services.common.models.config import ModelConfig
from services.common.models.factory import build_vlm, load_vlm
from services.common.models.presets import model_config

ARCHS = ("qwen2_vl", "llava")
VISION_PREFIX = {"qwen2_vl": "model.visual.", "llava": "model.vision_tower."}
# LLaVA feeds the last hidden state of the CLIP tower to the projector; CLIP's post-layernorm is unused.
UNUSED = {"qwen2_vl": (), "llava": ("model.vision_tower.post_layernorm.",)}


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_preset_is_under_one_million_parameters(arch):
    vlm = build_vlm(ModelConfig(arch=arch, preset="tiny"))
    assert 50_000 < vlm.num_parameters() < 1_000_000


@pytest.mark.parametrize("arch", ARCHS)
def test_small_preset_config_is_larger_than_tiny(arch):
    tiny, small = model_config(arch, "tiny", 1024), model_config(arch, "small", 1024)
    assert small.text_config.hidden_size > tiny.text_config.hidden_size


@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_gives_identical_parameters(arch):
    a = build_vlm(ModelConfig(arch=arch, seed=7)).model.state_dict()
    b = build_vlm(ModelConfig(arch=arch, seed=7)).model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_different_seed_gives_different_parameters():
    a = build_vlm(ModelConfig(seed=1)).model.state_dict()
    b = build_vlm(ModelConfig(seed=2)).model.state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_build_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_vlm(ModelConfig(seed=5))
    assert torch.equal(torch.rand(3), expected)


def test_bfloat16_build():
    vlm = build_vlm(ModelConfig(dtype="bfloat16"))
    assert vlm.dtype == torch.bfloat16


@pytest.mark.parametrize("arch", ARCHS)
def test_backward_reaches_vision_and_text(arch, questions, images):
    vlm = build_vlm(ModelConfig(arch=arch))
    batch = vlm.processor.sft_batch(questions, images, ["red", "three", "B", "yellow"])
    loss = -vlm.completion_logprobs(batch).sum()
    loss.backward()
    grads = {n: p.grad for n, p in vlm.model.named_parameters()}
    vision = [n for n in grads if n.startswith(VISION_PREFIX[arch]) and not n.startswith(UNUSED[arch])]
    text = [n for n in grads if ".language_model." in n]
    assert vision and text
    dead = [n for n in vision + text if grads[n] is None or not grads[n].abs().sum() > 0]
    assert dead == []
    projector = [n for n in grads if "merger" in n or "multi_modal_projector" in n]
    assert projector and all(grads[n].abs().sum() > 0 for n in projector)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_gives_identical_logits(arch, tmp_path, questions, images):
    vlm = build_vlm(ModelConfig(arch=arch, seed=3))
    vlm.save(tmp_path)
    again = load_vlm(tmp_path)
    assert type(again.model) is type(vlm.model)
    assert again.tokenizer.backend_tokenizer.to_str() == vlm.tokenizer.backend_tokenizer.to_str()
    assert again.tokenizer.chat_template == vlm.tokenizer.chat_template
    batch = vlm.processor.sft_batch(questions, images, ["red", "three", "B", "yellow"])
    batch2 = again.processor.sft_batch(questions, images, ["red", "three", "B", "yellow"])
    assert torch.equal(batch.input_ids, batch2.input_ids)
    assert torch.equal(batch.pixel_values, batch2.pixel_values)
    with torch.no_grad():
        a = vlm.model(**batch.full_inputs()).logits
        b = again.model(**batch2.full_inputs()).logits
    assert torch.equal(a, b)


def test_model_config_path_wins_over_preset(tmp_path):
    build_vlm(ModelConfig(arch="llava", seed=4)).save(tmp_path)
    loaded = build_vlm(ModelConfig(arch="qwen2_vl", preset="small", path=tmp_path))
    assert loaded.model.config.model_type == "llava"


def test_load_from_missing_dir_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_vlm(tmp_path / "nowhere")


def test_no_torchvision_is_imported():
    code = (
        "import sys\n"
        "from PIL import Image\n"
        "from services.common.models import ModelConfig, build_vlm\n"
        "for arch in ('qwen2_vl', 'llava'):\n"
        "    v = build_vlm(ModelConfig(arch=arch))\n"
        "    v.generate(['q'], [Image.new('RGB', (64, 64))], max_new_tokens=2)\n"
        "bad = [m for m in sys.modules if m == 'torchvision' or m.startswith('torchvision.')]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
