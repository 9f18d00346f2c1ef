"""lm.compile_elementwise (llmrec.tmf.compiled_layers): real torch.compile (inductor) on a tiny random Llama."""

from __future__ import annotations

import logging

import torch
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from llmrec.tmf import compiled_layers
from llmrec.tmf.compiled_layers import CompiledLlamaMLP, CompiledLlamaRMSNorm
from llmrec.tmf.lm import LMConfig, load_lm

IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [0, 0, 0, 12, 13, 14, 15]])
MASK = torch.tensor([[1] * 7, [0, 0, 0, 1, 1, 1, 1]])


def loss_and_grads(model):
    for p in model.parameters():
        p.requires_grad_(p.ndim == 1)  # the norms' weights: gradients through the compiled backward
    logits = model(input_ids=IDS, attention_mask=MASK).logits
    loss = logits[MASK.bool()].logsumexp(-1).mean()
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters() if p.grad is not None]


def test_compiled_blocks_give_the_eager_loss_and_gradients(tiny_lm_dir, tmp_path, monkeypatch):
    # a kernel cache of its own: inductor's shared one may hold kernels of another ATEN_CPU_CAPABILITY (module doc)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    eager, _ = load_lm(LMConfig(name_or_path=str(tiny_lm_dir)))
    compiled, _ = load_lm(LMConfig(name_or_path=str(tiny_lm_dir), compile_elementwise=True))
    types = [type(m) for m in compiled.modules()]
    n_layers = compiled.config.num_hidden_layers
    assert types.count(CompiledLlamaRMSNorm) == 2 * n_layers + 1 and types.count(CompiledLlamaMLP) == n_layers
    assert LlamaRMSNorm not in types and LlamaMLP not in types
    assert CompiledLlamaRMSNorm not in [type(m) for m in eager.modules()]
    loss_e, grads_e = loss_and_grads(eager)
    loss_c, grads_c = loss_and_grads(compiled)
    assert len(grads_e) == len(grads_c) == 2 * n_layers + 1
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_e, grads_c, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    assert compiled_layers._RMS_NORM.compiled is not None and not compiled_layers._RMS_NORM.failed


def test_a_capability_without_its_own_kernel_cache_is_warned(tiny_lm_dir, monkeypatch, caplog):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    with caplog.at_level(logging.WARNING, logger=compiled_layers.__name__):
        assert compiled_layers.compile_elementwise(torch.nn.Sequential()) == 0
    assert "TORCHINDUCTOR_CACHE_DIR" in caplog.text


def test_a_failing_compile_falls_back_to_eager_with_a_warning(tiny_lm_dir, monkeypatch, caplog):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler here")
        return run

    fresh = compiled_layers._Compiled(compiled_layers.silu_gate)
    monkeypatch.setattr(compiled_layers, "_SILU_GATE", fresh)
    monkeypatch.setattr(compiled_layers.torch, "compile", broken)
    gate, up = torch.randn(3, 4), torch.randn(3, 4)
    with caplog.at_level(logging.WARNING, logger=compiled_layers.__name__):
        out = compiled_layers._SILU_GATE(gate, up)
    torch.testing.assert_close(out, torch.nn.functional.silu(gate) * up)
    assert fresh.failed and "no C++ compiler here" in caplog.text
