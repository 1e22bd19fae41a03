import numpy as np
import pytest
import torch

from editors.requests import EditRequest, RequestError
from editors.weights import applied, get_tensor
from iceb.generation import GenerationConfig, ImageCache, generate

NAME = "text_encoder.encoder.layers.3.mlp.fc2.weight"
UNET = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"


def _name(pipe, base):
    from editors.hooks import fc2_name

    return fc2_name(pipe.text_encoder, 3) if base == NAME else base


def test_apply_then_restore_is_bitwise_exact(tiny_pipe):
    names = [_name(tiny_pipe, NAME), UNET]
    before = {n: get_tensor(tiny_pipe, n).detach().clone() for n in names}
    new = {n: torch.randn_like(before[n]) for n in names}
    with applied(tiny_pipe, new):
        for n in names:
            assert torch.equal(get_tensor(tiny_pipe, n), new[n])
    for n in names:
        assert torch.equal(get_tensor(tiny_pipe, n), before[n])


def test_restore_happens_on_error_and_nan_is_refused(tiny_pipe):
    n = _name(tiny_pipe, NAME)
    before = get_tensor(tiny_pipe, n).detach().clone()
    with pytest.raises(RuntimeError):
        with applied(tiny_pipe, {n: torch.zeros_like(before)}):
            raise RuntimeError("boom")
    assert torch.equal(get_tensor(tiny_pipe, n), before)
    bad = before.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError):
        with applied(tiny_pipe, {n: bad}):
            pass
    assert torch.equal(get_tensor(tiny_pipe, n), before)
    with pytest.raises(ValueError, match="shape mismatch"):
        with applied(tiny_pipe, {n: torch.zeros(3, 3)}):
            pass


def test_same_seed_same_image_other_seed_other_image(tiny_pipe):
    cfg = GenerationConfig(num_inference_steps=2, batch_size=4)
    a = generate(tiny_pipe, ["a photo of a cat", "a dog"], [1, 2], cfg, progress=False)
    b = generate(tiny_pipe, ["a photo of a cat"], [1], cfg, progress=False)
    c = generate(tiny_pipe, ["a photo of a cat"], [3], cfg, progress=False)
    assert a[0].dtype == np.uint8 and a[0].shape == (16, 16, 3)
    # per-prompt generators: an image does not depend on its batch companions
    assert np.abs(a[0].astype(int) - b[0].astype(int)).max() <= 1
    assert np.abs(a[0].astype(int) - c[0].astype(int)).mean() > 5


def test_image_cache_counts_hits(tiny_pipe, tmp_path):
    cache = ImageCache(tmp_path)
    cfg = GenerationConfig(num_inference_steps=2)
    first = cache.generate(tiny_pipe, "fp", ["a cat", "a dog"], [1, 2], cfg, progress=False)
    second = cache.generate(tiny_pipe, "fp", ["a cat", "a dog"], [1, 2], cfg, progress=False)
    assert (cache.misses, cache.hits) == (2, 2)
    assert all(np.array_equal(x, y) for x, y in zip(first, second))


def test_edit_request_validation():
    with pytest.raises(RequestError):
        EditRequest("")
    with pytest.raises(RequestError, match="slot"):
        EditRequest("cat", "dog", templates=("no slot",))
    with pytest.raises(RequestError, match="needs a destination"):
        EditRequest("cat", "", kind="update")
    r = EditRequest("cat", "", kind="erase", templates=["a {}"])
    assert r.templates == ("a {}",) and r.destination_prompts() == [""]
