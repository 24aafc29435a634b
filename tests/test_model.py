"""Model: padding invariance, causality, cached decoding, shared embeddings, config checks."""

import pytest
import torch

from fs2mini.errors import UserError
from fs2mini.dropout import Dropout
from fs2mini.model import ARCHS, ModelConfig, attention, build_model, check_model_config, enable_activation_checkpointing
from fs2mini.vocab import VocabInfo

VOCAB = VocabInfo(size=50, pad_idx=0, bos_idx=2, eos_idx=3, unk_idx=1)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(model_dim=32, num_encoder_layers=2, num_decoder_layers=2, num_encoder_attn_heads=4,
                      num_decoder_attn_heads=4, ffn_inner_dim=64, dropout_p=0.1)
    return build_model(cfg, VOCAB).eval()


def test_padding_does_not_change_outputs():
    model = tiny_model()
    source = torch.tensor([[4, 5, 6, 7, 3]])
    target = torch.tensor([[3, 8, 9, 10]])
    alone = model(source, torch.tensor([5]), target).logits()
    padded_source = torch.tensor([[4, 5, 6, 7, 3, 0, 0], [4, 5, 6, 7, 8, 9, 3]])
    padded_target = torch.tensor([[3, 8, 9, 10, 0, 0], [3, 8, 9, 10, 11, 12]])
    batched = model(padded_source, torch.tensor([5, 7]), padded_target).logits()
    torch.testing.assert_close(batched[0, :4], alone[0], atol=1e-5, rtol=1e-5)


def test_future_target_tokens_do_not_affect_earlier_positions():
    model = tiny_model()
    source, lengths = torch.tensor([[4, 5, 6, 3]]), torch.tensor([4])
    a = model(source, lengths, torch.tensor([[3, 8, 9, 10, 11]])).logits()
    b = model(source, lengths, torch.tensor([[3, 8, 9, 20, 30]])).logits()
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3:], b[:, 3:])


def test_incremental_decoding_matches_full_recomputation():
    model = tiny_model()
    source = torch.tensor([[4, 5, 6, 7, 3], [4, 5, 3, 0, 0]])
    lengths = torch.tensor([5, 3])
    target = torch.tensor([[3, 8, 9, 10, 11, 12], [3, 8, 13, 14, 15, 16]])
    encoder_out, mask = model.encode(source, lengths)
    full = model.project(model.decode(target, encoder_out, mask)).log_softmax(-1)
    state = model.new_decoder_state()
    # A forced two-token prefix, then one token at a time.
    steps = [model.project(model.decode(target[:, :2], encoder_out, mask, state))]
    for t in range(2, target.size(1)):
        steps.append(model.project(model.decode(target[:, t : t + 1], encoder_out, mask, state)))
    torch.testing.assert_close(torch.cat(steps, dim=1).log_softmax(-1), full, atol=1e-5, rtol=1e-5)


def test_one_embedding_table_is_shared_by_encoder_decoder_and_output():
    model = tiny_model()
    names = [name for name, p in model.named_parameters() if p.shape == (VOCAB.size, 32)]
    assert names == ["embed.weight"]
    hidden = torch.randn(1, 1, 32)
    torch.testing.assert_close(model.project(hidden), hidden @ model.embed.weight.T)


def test_dense_600m_preset_has_nllb_shape():
    cfg = ARCHS["dense_600m"]
    assert (cfg.model_dim, cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.num_encoder_attn_heads, cfg.ffn_inner_dim) == (1024, 12, 12, 16, 4096)


def test_model_dim_not_divisible_by_heads_is_a_clear_error():
    with pytest.raises(UserError, match=r"--model.num-encoder-attn-heads 3 must divide --model.model-dim 128"):
        check_model_config(ModelConfig(model_dim=128, num_encoder_attn_heads=3))
    with pytest.raises(UserError, match=r"--model.model-dim must be a positive integer, got 0"):
        check_model_config(ModelConfig(model_dim=0))


@pytest.mark.parametrize("causal", [False, True])
def test_cpu_training_attention_is_sdpa_math_with_fs2mini_dropout(causal):
    """The unfused CPU path (taken only with attention dropout) computes what SDPA computes."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 5, 8), torch.randn(3, 2, 5, 8), torch.randn(3, 2, 5, 8)
    mask = None if causal else (torch.arange(5) < torch.tensor([5, 3, 1]).unsqueeze(1))[:, None, None, :]
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    # p = 1e-9 takes the dropout path but its mask (p rounded to 1/65536) keeps everything.
    torch.testing.assert_close(attention(q, k, v, mask, causal, Dropout(1e-9).train()), expected)
    dropped = attention(q, k, v, mask, causal, Dropout(0.5).train())
    assert not torch.allclose(dropped, expected)
    torch.testing.assert_close(attention(q, k, v, mask, causal, Dropout(0.5).eval()), expected)


@pytest.mark.parametrize("causal", [False, True])
def test_cpu_bf16_attention_is_the_math_path_with_a_softmax_of_the_bf16_scores(causal):
    """On CPU in bf16 the fused SDPA kernel is 4x slower than two matmuls (model.attention's docstring): the
    math path is taken instead, with or without dropout, and gives SDPA's fp32 result to bf16 precision."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Calls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.name())
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 16) for _ in range(3))
    mask = None if causal else (torch.arange(7) < torch.tensor([7, 4, 1]).unsqueeze(1))[:, None, None, :]
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    q16, k16, v16 = q.bfloat16(), k.bfloat16(), v.bfloat16()
    with Calls() as calls:
        low = attention(q16, k16, v16, mask, causal, Dropout(0.0).eval())
    assert low.dtype == torch.bfloat16
    assert not any("scaled_dot_product" in name for name in calls.names), calls.names
    assert "aten::_softmax" in calls.names and "aten::_to_copy" not in calls.names  # no cast to fp32 and back
    torch.testing.assert_close(low.float(), expected, rtol=0, atol=3e-2)


@pytest.mark.parametrize("init, linear_std, embed_std", [("fairseq", None, 256**-0.5), ("hf", 0.02, 0.02)])
def test_init_choices_set_the_documented_scales(init, linear_std, embed_std):
    torch.manual_seed(0)
    vocab = VocabInfo(size=4000, pad_idx=1, bos_idx=0, eos_idx=2, unk_idx=3)
    model = ModelConfig(model_dim=256, ffn_inner_dim=1024, init=init).build(vocab)
    assert model.embed.weight[1].abs().sum() == 0  # pad row
    rows = torch.cat([model.embed.weight[:1], model.embed.weight[2:]])
    assert rows.std().item() == pytest.approx(embed_std, rel=0.05)
    inner = model.encoder_layers[0].ffn.inner_proj.weight
    xavier_std = (2 / (inner.size(0) + inner.size(1))) ** 0.5
    assert inner.std().item() == pytest.approx(linear_std or xavier_std, rel=0.05)


def loss_and_gradients(model, seed):
    """Summed training loss and every parameter's gradient of one teacher-forced batch, dropout on."""
    model.train().zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    source, lengths = torch.tensor([[4, 5, 6, 7, 3], [4, 5, 3, 0, 0]]), torch.tensor([5, 3])
    target_input, target_output = torch.tensor([[3, 8, 9, 10], [3, 11, 12, 0]]), torch.tensor([[8, 9, 10, 3], [11, 12, 3, 0]])
    loss = model(source, lengths, target_input).loss(target_output, VOCAB.pad_idx, 0.1)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def count_layer_calls(model):
    """Calls of every encoder and decoder layer so far (each recomputation under checkpointing counts)."""
    calls = []
    for layer in [*model.encoder_layers, *model.decoder_layers]:
        layer.register_forward_pre_hook(lambda module, inputs: calls.append(module))
    return calls


def test_activation_checkpointing_recomputes_layers_with_the_same_loss_and_gradients():
    """Checkpointing restores the RNG state before recomputing, so dropout draws the same masks."""
    model = tiny_model()
    calls = count_layer_calls(model)
    plain_loss, plain_grads = loss_and_gradients(model, seed=7)
    assert len(calls) == 4
    enable_activation_checkpointing(model)
    checkpointed_loss, checkpointed_grads = loss_and_gradients(model, seed=7)
    assert len(calls) == 4 + 8  # each layer ran again in the backward pass
    assert torch.equal(checkpointed_loss, plain_loss)
    for name, grad in plain_grads.items():
        assert torch.equal(checkpointed_grads[name], grad), name
    _, other_seed = loss_and_gradients(model, seed=8)
    assert not torch.equal(other_seed["embed.weight"], plain_grads["embed.weight"])  # dropout was really on


def test_activation_checkpointing_is_off_in_eval_and_incremental_decoding():
    model = tiny_model()
    enable_activation_checkpointing(model)
    calls = count_layer_calls(model)
    source, lengths = torch.tensor([[4, 5, 6, 3]]), torch.tensor([4])
    model.train()  # even in training mode, a decoder state (a cache each call appends to) is never recomputed
    encoder_out, mask = model.encode(source, lengths)
    state = model.new_decoder_state()
    model.decode(torch.tensor([[3]]), encoder_out, mask, state).sum().backward()
    assert len(calls) == 2 * 2 + 2 and state.num_steps == 1  # encoder layers twice, decoder layers once
    model.eval()
    with torch.no_grad():
        model(source, lengths, torch.tensor([[3, 8, 9]]))
    assert len(calls) == 6 + 4


def test_activation_checkpointing_of_a_model_without_the_hook_names_the_flag():
    with pytest.raises(UserError, match=r"^--trainer.activation-checkpointing: model Linear has no checkpoint_layers"):
        enable_activation_checkpointing(torch.nn.Linear(2, 2))


def test_bf16_autocast_on_cpu_keeps_the_residual_stream_in_bf16_with_fp32_gradients():
    """Under CPU bf16 autocast every layer takes and returns bf16 (no cast around each layer norm, `residual_dtype`),
    the weights and their gradients stay fp32, and the loss and gradients stay close to fp32's; without
    autocast the stream is fp32 as before."""
    from fs2mini.data import collate
    from fs2mini.task import Seq2Seq

    model = tiny_model(seed=4)
    batch = collate([([4, 5, 6, 7, 3], [3, 8, 9, 10, 3]), ([8, 9, 3], [3, 11, 12, 3])], VOCAB.pad_idx)
    layer_inputs = []
    hooks = [layer.register_forward_hook(lambda _m, args, out: layer_inputs.append((args[0].dtype, out.dtype)))
             for layer in [*model.encoder_layers, *model.decoder_layers]]
    task = Seq2Seq(0.1, pad_idx=VOCAB.pad_idx)
    exact, _ = task.compute_loss(model, batch)
    exact.backward()
    exact_grads = [p.grad.clone() for p in model.parameters()]
    assert set(layer_inputs) == {(torch.float32, torch.float32)}
    model.zero_grad(set_to_none=True)
    layer_inputs.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = task.compute_loss(model, batch)
    low.backward()
    for hook in hooks:
        hook.remove()
    assert len(layer_inputs) == 4 and set(layer_inputs) == {(torch.bfloat16, torch.bfloat16)}
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, exact, rtol=2e-2, atol=0)
    for p, grad in zip(model.parameters(), exact_grads):
        assert p.dtype == p.grad.dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(p.grad.flatten(), grad.flatten(), dim=0)
        assert cosine > 0.98 or grad.abs().max() < 1e-6, (cosine, p.shape)
