"""TMF modality fusion (AMSA Eq. 5-6, CMA Eq. 7-8) and the item attention mask."""

import math

import pytest
import torch

from adapters.fusion import FusionConfig, ModalityFusion, item_attention_mask
from llmrec.config import ConfigError, from_dict

D_IMG, D_TXT, D_G = 6, 4, 3


def make_inputs(n_history, n_items, n_positions, seed=0, dims=(D_IMG, D_TXT, D_G)):
    """Random item embeddings for a batch of prompts; padding rows are zeros with modality_mask False."""
    gen = torch.Generator().manual_seed(seed)
    n_history, n_items = torch.tensor(n_history), torch.tensor(n_items)
    batch = len(n_history)
    real = torch.arange(n_positions).unsqueeze(0) < n_items.unsqueeze(1)  # [B, N]
    image, text, graph = (torch.randn(batch, n_positions, d, generator=gen) * real.unsqueeze(-1) for d in dims)
    modality_mask = real.unsqueeze(-1).expand(batch, n_positions, 3).clone()
    attn_mask = item_attention_mask(n_history, n_items, n_positions)
    return image, text, graph, modality_mask, attn_mask


def make_fusion(seed=0, **cfg):
    torch.manual_seed(seed)
    return ModalityFusion(FusionConfig(**cfg), D_IMG, D_TXT, D_G).eval()


def test_item_attention_mask_matches_hand_written_pattern():
    mask = item_attention_mask(torch.tensor([2]), torch.tensor([4]), 5)[0]
    # rows: h0 h1 c2 c3 pad4 ; history sees history, a candidate sees history + itself, padding itself
    expected = torch.tensor([
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 0, 1, 0],
        [0, 0, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("n_history, n_items, n_positions", [([3], [2], 4), ([-1], [2], 4), ([1], [5], 4)])
def test_item_attention_mask_rejects_inconsistent_counts(n_history, n_items, n_positions):
    with pytest.raises(ValueError, match="row 0"):
        item_attention_mask(torch.tensor(n_history), torch.tensor(n_items), n_positions)


@pytest.mark.parametrize("cfg, out_dim", [
    ({}, max(D_IMG, D_TXT)),
    ({"fused_dim": 8}, 8),
    ({"n_heads": 2, "fused_dim": 8, "amsa_dim": 12}, 8),
    ({"use_cma": False, "fused_dim": 5}, 5),
])
def test_output_shape_and_finite(cfg, out_dim):
    fusion = make_fusion(**cfg)
    out = fusion(*make_inputs([3, 1], [5, 3], 6))
    assert out.shape == (2, 6, out_dim) and fusion.fused_dim == out_dim
    assert torch.isfinite(out).all()


def test_candidates_do_not_see_each_other():
    fusion = make_fusion()
    image, text, graph, modality_mask, attn_mask = make_inputs([3], [6], 6)
    base = fusion(image, text, graph, modality_mask, attn_mask)
    image2, text2, graph2 = image.clone(), text.clone(), graph.clone()
    for x in (image2, text2, graph2):
        x[0, 4] += 3.0  # change candidate j = 4
    changed = fusion(image2, text2, graph2, modality_mask, attn_mask)
    assert not torch.allclose(changed[0, 4], base[0, 4])
    unchanged = [0, 1, 2, 3, 5]  # history and the other candidates
    torch.testing.assert_close(changed[0, unchanged], base[0, unchanged])


def test_history_contextualizes_candidates():
    fusion = make_fusion()
    image, text, graph, modality_mask, attn_mask = make_inputs([3], [6], 6)
    base = fusion(image, text, graph, modality_mask, attn_mask)
    image2, text2 = image.clone(), text.clone()
    image2[0, 1] += 3.0  # change history item 1
    text2[0, 1] -= 3.0
    changed = fusion(image2, text2, graph, modality_mask, attn_mask)
    for candidate in (3, 4, 5):
        assert not torch.allclose(changed[0, candidate], base[0, candidate], atol=1e-4)


def test_padding_does_not_change_real_rows():
    fusion = make_fusion(n_heads=2, fused_dim=8, amsa_dim=12)
    image, text, graph, modality_mask, attn_mask = make_inputs([2, 4], [4, 6], 6)
    base = fusion(image, text, graph, modality_mask, attn_mask)
    noisy = [x.clone() for x in (image, text, graph)]
    for x in noisy:
        x[0, 4:] = 100.0  # padding positions of row 0 hold garbage
    out = fusion(*noisy, modality_mask, attn_mask)
    torch.testing.assert_close(out[0, :4], base[0, :4])
    torch.testing.assert_close(out[1], base[1])
    # the same prompt padded to a longer N gives the same real rows
    pad = 3
    longer = fusion(*(torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (image, text, graph)),
                    torch.nn.functional.pad(modality_mask, (0, 0, 0, pad)),
                    item_attention_mask(torch.tensor([2, 4]), torch.tensor([4, 6]), 6 + pad))
    torch.testing.assert_close(longer[:, :6], base)


@pytest.mark.parametrize("missing", [0, 1, 2])
def test_missing_modality_everywhere_gives_finite_outputs_and_grads(missing):
    fusion = make_fusion(n_heads=2, fused_dim=8, amsa_dim=12).train()
    image, text, graph, modality_mask, attn_mask = make_inputs([3, 0], [5, 2], 6)
    modality_mask[..., missing] = False
    inputs = [image, text, graph]
    inputs[missing] = torch.full_like(inputs[missing], float("nan"))  # masked values are never read
    out = fusion(*inputs, modality_mask, attn_mask)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in fusion.parameters() if p.grad is not None)


def test_item_with_no_modality_and_all_masks_false():
    fusion = make_fusion()
    image, text, graph, modality_mask, attn_mask = make_inputs([2], [4], 4)
    modality_mask[0, 3] = False  # a candidate without any embedding still gets the user context
    out = fusion(image, text, graph, modality_mask, attn_mask)
    assert torch.isfinite(out).all()
    nothing = fusion(image, text, graph, torch.zeros_like(modality_mask), attn_mask)
    assert torch.isfinite(nothing).all()


def test_cma_falls_back_to_amsa_when_images_are_absent():
    full = make_fusion()
    amsa_only = make_fusion(use_cma=False)
    amsa_only.load_state_dict(full.state_dict(), strict=False)
    image, text, graph, modality_mask, attn_mask = make_inputs([3], [5], 5)
    modality_mask[..., 0] = False
    torch.testing.assert_close(full(image, text, graph, modality_mask, attn_mask),
                               amsa_only(image, text, graph, modality_mask, attn_mask))


def test_amsa_only_ablation_is_the_projected_amsa_output_of_the_full_model():
    full = make_fusion()
    amsa_only = make_fusion(use_cma=False)
    assert not any("cma" in name or ("to_fused" in name and "amsa" not in name)
                   for name, _ in amsa_only.named_parameters())
    missing, unexpected = amsa_only.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected  # the CMA weights are the only difference
    captured = {}
    full.amsa_to_fused.register_forward_hook(lambda module, args, out: captured.setdefault("query", out))
    inputs = make_inputs([3], [5], 5)
    full_out = full(*inputs)
    torch.testing.assert_close(amsa_only(*inputs), captured["query"])
    assert not torch.allclose(full_out, captured["query"])


def test_printed_equations_without_projections():
    """qkv_projections=False computes Eq. 6-8 exactly as printed (scaled by the dot-product width)."""
    dims = (4, 4, 3)
    torch.manual_seed(0)
    fusion = ModalityFusion(FusionConfig(qkv_projections=False), *dims).eval()
    image, text, graph, modality_mask, _ = make_inputs([5], [5], 5, dims=dims)
    attn_mask = torch.ones(1, 5, 5, dtype=torch.bool)
    out = fusion(image, text, graph, modality_mask, attn_mask)[0]

    v_m = torch.cat([image, text, graph], dim=-1)[0]  # Eq. 5, d = 11
    v_amsa = torch.softmax(v_m @ v_m.T / math.sqrt(v_m.shape[1]), dim=-1) @ v_m  # Eq. 6
    query = fusion.amsa_to_fused(v_amsa)
    img, txt = image[0], text[0]
    cma_1 = torch.softmax(query @ img.T / 2.0, dim=-1) @ txt  # Eq. 7, d_v = 4
    cma_o = torch.softmax(cma_1 @ txt.T / 2.0, dim=-1) @ img  # Eq. 8
    torch.testing.assert_close(out, cma_o)


def test_multi_head_differs_from_single_head_and_checks_divisibility():
    inputs = make_inputs([3], [5], 5)
    one = make_fusion(fused_dim=8, amsa_dim=12)(*inputs)
    two = make_fusion(fused_dim=8, amsa_dim=12, n_heads=2)(*inputs)
    assert one.shape == two.shape and not torch.allclose(one, two)
    with pytest.raises(ValueError, match="not divisible by n_heads=2"):
        make_fusion(n_heads=2)  # d = 6 + 4 + 3 = 13
    with pytest.raises(ValueError, match="fused_dim 7"):
        make_fusion(n_heads=2, amsa_dim=12, fused_dim=7)


def test_disabled_fusion_passes_the_graph_embedding_through():
    fusion = make_fusion(enabled=False)
    assert fusion.fused_dim == D_G and not list(fusion.parameters())
    image, text, graph = (torch.randn(2, 5, d) for d in (D_IMG, D_TXT, D_G))
    modality_mask = torch.ones(2, 5, 3, dtype=torch.bool)
    modality_mask[1, 4, 2] = False  # a missing graph row is a zero row
    attn = item_attention_mask(torch.tensor([3, 2]), torch.tensor([5, 5]), 5)
    out = fusion(image, text, graph, modality_mask, attn)
    expected = graph.clone()
    expected[1, 4] = 0.0
    assert torch.equal(out, expected)


def test_gradients_reach_every_parameter():
    fusion = make_fusion(n_heads=2, fused_dim=8, amsa_dim=12, dropout=0.1).train()
    inputs = make_inputs([3, 2], [5, 4], 5)
    fusion(*inputs)[:, 3:].sum().backward()  # loss on candidate rows only
    for name, param in fusion.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_bad_inputs_are_named():
    fusion = make_fusion()
    image, text, graph, modality_mask, attn_mask = make_inputs([2], [3], 3)
    with pytest.raises(ValueError, match="text must have shape"):
        fusion(image, text[..., :3], graph, modality_mask, attn_mask)
    with pytest.raises(ValueError, match="attn_mask must be a bool tensor"):
        fusion(image, text, graph, modality_mask, attn_mask.long())
    with pytest.raises(ValueError, match="graph_dim must be a positive integer"):
        ModalityFusion(FusionConfig(), 4, 4, 0)


def test_config_validation_names_the_key():
    cfg = from_dict(FusionConfig, {"n_heads": 4, "use_cma": False, "fused_dim": 16})
    assert (cfg.n_heads, cfg.use_cma, cfg.fused_dim) == (4, False, 16)
    with pytest.raises(ConfigError, match="fusion.n_heads"):
        from_dict(FusionConfig, {"n_heads": 0})
    with pytest.raises(ConfigError, match="fusion.dropout"):
        from_dict(FusionConfig, {"dropout": 1.5})
    # adapters/ imports nothing of llmrec: built directly, the class raises a plain ValueError
    with pytest.raises(ValueError, match="fusion.dropout") as raised:
        FusionConfig(dropout=1.5)
    assert not isinstance(raised.value, ConfigError)
    with pytest.raises(ValueError, match="amsa_dim needs qkv_projections"):
        FusionConfig(qkv_projections=False, amsa_dim=8)
