"""Loss: the fused projection + label-smoothed NLL equals a hand computation and PyTorch's own
cross-entropy (value and gradients), summed over non-pad tokens."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from fs2mini.data import collate
from fs2mini.loss import linear_cross_entropy, linear_token_nll
from fs2mini.model import ModelConfig, build_model
from fs2mini.task import Seq2Seq
from fs2mini.vocab import VocabInfo


class MatmulOperands(TorchDispatchMode):
    """Records the two matrix operands of every `mm`/`addmm`/`addmm_` run inside it: what the fused loss multiplies."""

    def __init__(self):
        super().__init__()
        self.operands: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_):
            self.operands.append((args[-2], args[-1]))
        return func(*args, **(kwargs or {}))


def test_fused_loss_equals_hand_computed_label_smoothed_cross_entropy():
    torch.manual_seed(0)
    batch = collate([([4, 5, 3], [3, 6, 7, 3]), ([4, 3], [3, 8, 3])], pad_idx=0)
    vocab, dim, eps = 9, 5, 0.1
    hidden, weight = torch.randn(2, batch.target_output.size(1), dim), torch.randn(vocab, dim)
    loss = linear_cross_entropy(hidden, weight, batch.target_output, pad_idx=0, label_smoothing=eps, chunk_rows=2)

    expected = 0.0
    for b in range(2):
        for t in range(batch.target_output.size(1)):
            gold = int(batch.target_output[b, t])
            if gold == 0:
                continue
            log_probs = torch.log_softmax(weight @ hidden[b, t], dim=-1)
            expected += (1 - eps) * -log_probs[gold] + eps * -log_probs.mean()
    torch.testing.assert_close(loss, torch.as_tensor(expected), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("eps,chunk_rows", [(0.0, 7), (0.1, 7), (0.2, 1000)])
def test_fused_loss_and_gradients_match_pytorch_cross_entropy(eps, chunk_rows):
    torch.manual_seed(1)
    hidden = torch.randn(3, 11, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    target = torch.randint(1, 50, (3, 11))
    target[1, 6:] = 0  # padding
    fused = linear_cross_entropy(hidden, weight, target, 0, eps, chunk_rows)
    reference = F.cross_entropy(F.linear(hidden, weight).flatten(0, 1), target.flatten(), ignore_index=0,
                                reduction="sum", label_smoothing=eps)
    torch.testing.assert_close(fused, reference)
    grads = torch.autograd.grad(2.5 * fused, [hidden, weight])  # the upstream gradient is applied
    expected = torch.autograd.grad(2.5 * reference, [hidden, weight])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert grads[0][1, 6:].abs().sum() == 0  # pad positions get no gradient


@pytest.mark.parametrize("row_multiple,frozen_table", [(4, False), (64, False), (64, True)])
def test_padding_chunks_changes_neither_loss_nor_gradients(row_multiple, frozen_table):
    """Zero rows padding a chunk (bf16 on CPU: the last chunk's row count a multiple of 64, so oneDNN's kernels
    are reused) add nothing to the loss, the table's gradient or the real rows' gradients."""
    from fs2mini.loss import _LinearCrossEntropy

    torch.manual_seed(4)
    rows = torch.randn(23, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=not frozen_table)
    target = torch.randint(1, 50, (23,))
    inputs = [rows] if frozen_table else [rows, weight]
    results = []
    for multiple in (1, row_multiple):
        loss = _LinearCrossEntropy.apply(rows, weight, target, 0.1, 10, multiple, True)
        results.append((loss, *torch.autograd.grad(1.5 * loss, inputs)))
    for padded, plain in zip(results[1], results[0]):
        torch.testing.assert_close(padded, plain, rtol=1e-12, atol=1e-12)


def test_fused_loss_under_no_grad_multiplies_only_the_logits():
    """Validation (no_grad) gets the loss from one matmul per chunk, no gradient matmuls: autograd still tells
    the Function that the table requires grad there, so the grad mode is passed in."""
    torch.manual_seed(6)
    hidden = torch.randn(40, 16, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(30, 16))
    target = torch.randint(1, 30, (40,))
    with_grad = linear_cross_entropy(hidden, weight, target, 0, 0.1, chunk_rows=16)
    with torch.no_grad(), MatmulOperands() as recorded:
        without = linear_cross_entropy(hidden, weight, target, 0, 0.1, chunk_rows=16)
    assert len(recorded.operands) == 3  # 40 rows: chunks of 16, 16 and 8, one matmul each
    torch.testing.assert_close(without, with_grad.detach())


def test_bf16_fused_loss_on_cpu_multiplies_row_counts_in_multiples_of_64():
    from fs2mini.loss import LOW_PRECISION_CPU_ROW_MULTIPLE

    torch.manual_seed(5)
    hidden, weight = torch.randn(150, 32, requires_grad=True), torch.randn(100, 32, requires_grad=True)
    target = torch.randint(1, 100, (150,))
    with MatmulOperands() as recorded:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = linear_cross_entropy(hidden, weight, target, 0, 0.1, chunk_rows=128)
        loss.backward()
    # the rows of each matmul (the table gradient's: its inner size, the table having 100 rows)
    rows = {b.size(0) if a.size(0) == 100 else a.size(0) for a, b in recorded.operands}
    assert rows == {128, LOW_PRECISION_CPU_ROW_MULTIPLE}, rows  # 150 rows: 128, and 22 padded to 64
    assert hidden.grad.shape == (150, 32) and torch.isfinite(hidden.grad).all()


def test_fused_loss_with_a_frozen_table_computes_no_table_gradient():
    """LoRA and --model.freeze embeddings: the hidden states' gradient is unchanged, the table's is never built."""
    torch.manual_seed(2)
    hidden = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 16, dtype=torch.float64)  # frozen
    target = torch.randint(1, 40, (2, 9))
    fused = linear_cross_entropy(hidden, weight, target, 0, 0.1, 4)
    reference = F.cross_entropy(F.linear(hidden, weight).flatten(0, 1), target.flatten(), ignore_index=0,
                                reduction="sum", label_smoothing=0.1)
    assert fused.grad_fn.saved_tensors[1] is None
    torch.testing.assert_close(torch.autograd.grad(fused, hidden)[0], torch.autograd.grad(reference, hidden)[0])


@pytest.mark.parametrize("chunk_rows", [1, 7, 1000])
def test_token_nll_is_the_unsmoothed_loss_token_by_token(chunk_rows):
    torch.manual_seed(3)
    hidden, weight = torch.randn(3, 11, 16, dtype=torch.float64), torch.randn(50, 16, dtype=torch.float64)
    target = torch.randint(1, 50, (3, 11))
    target[1, 6:] = 0  # padding
    per_token = linear_token_nll(hidden, weight, target, 0, chunk_rows)
    expected = F.cross_entropy(F.linear(hidden, weight).flatten(0, 1), target.flatten(), ignore_index=0,
                               reduction="none").view(3, 11)
    torch.testing.assert_close(per_token, expected)
    assert per_token[1, 6:].abs().sum() == 0
    torch.testing.assert_close(per_token.sum(), linear_cross_entropy(hidden, weight, target, 0, 0.0, chunk_rows))


def test_fused_loss_under_bf16_autocast_is_close_to_fp32():
    torch.manual_seed(2)
    hidden, weight = torch.randn(64, 32, requires_grad=True), torch.randn(100, 32, requires_grad=True)
    target = torch.randint(1, 100, (64,))
    exact = linear_cross_entropy(hidden, weight, target, 0, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = linear_cross_entropy(hidden, weight, target, 0, 0.1)
    low.backward()
    assert low.dtype == torch.float32 and hidden.grad.dtype == weight.grad.dtype == torch.float32
    torch.testing.assert_close(low, exact, rtol=2e-2, atol=0)


def test_bf16_fused_loss_is_the_cross_entropy_of_its_bf16_logits():
    """bf16 training on CPU takes the loss from the bf16 softmax's p[gold]: token by token within 5e-3 (bf16 keeps
    8 bits: 2⁻⁸ = 0.0039) of the fp32 cross-entropy of the same bf16 logits (both terms, the smoothing term's mean
    logit too: the table's mean row is not zero here), the gradients to bf16's precision. Without gradients
    (validation) the loss is that of fp32."""
    from fs2mini.loss import _bf16_chunk_terms

    torch.manual_seed(7)
    hidden, weight = torch.randn(300, 32, requires_grad=True), (0.5 * torch.randn(500, 32) + 0.3).requires_grad_()
    target = torch.randint(1, 500, (300,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(hidden, weight, target, 0, 0.1, chunk_rows=128)
        with torch.no_grad():
            validation = linear_cross_entropy(hidden, weight, target, 0, 0.1, chunk_rows=128)
    got = torch.autograd.grad(fused, (hidden, weight))
    logits = (hidden.bfloat16() @ weight.bfloat16().T).float()  # what the fused loss's matmul makes, in fp32
    reference = F.cross_entropy(logits, target, ignore_index=0, reduction="sum", label_smoothing=0.1)
    want = torch.autograd.grad(reference, (hidden, weight))
    torch.testing.assert_close(validation, reference.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(fused, reference, rtol=2e-4, atol=0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=5e-3 * w.abs().max().item())
    _, nll, smooth = _bf16_chunk_terms(hidden.detach().bfloat16(), weight.detach().bfloat16(), target.unsqueeze(1),
                                       weight.detach().float().mean(0))
    log_p = logits.detach().log_softmax(dim=-1)
    torch.testing.assert_close(nll.squeeze(1), -log_p.gather(1, target.unsqueeze(1)).squeeze(1), rtol=0, atol=5e-3)
    torch.testing.assert_close(smooth.squeeze(1), -log_p.mean(dim=-1), rtol=0, atol=5e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_loss_of_a_gold_token_whose_probability_underflows_is_finite(dtype):
    """-log p[gold] = 400: exact in fp32; in bf16, whose loss comes from p[gold], capped where p underflows
    (-log of fp32's smallest normal number, 87.3). The gradient is exact in both."""
    hidden = torch.tensor([[1.0, 0.0]], requires_grad=True)
    weight = torch.tensor([[200.0, 0.0], [0.0, 1.0], [-200.0, 0.0]], requires_grad=True)  # gold 2: logit -200
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, torch.tensor([2]), 1, 0.0)
    loss.backward()
    expected = 400.0 if dtype == torch.float32 else -math.log(torch.finfo(torch.float32).tiny)
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    torch.testing.assert_close(hidden.grad, torch.tensor([[400.0, 0.0]]))  # softmax − onehot = (1, 0, −1) · weight


def test_fused_loss_under_bf16_autocast_multiplies_in_bf16_with_fp32_gradients():
    """Every vocabulary-sized matmul of the loss runs in bf16 under autocast, the weight gradient's too (its
    in-place `addmm_` is not autocast: fed fp32 rows by the last layer norm it ran in fp32, 5% of a step), while
    the gradients stay close to fp32's."""
    torch.manual_seed(3)
    hidden, weight = torch.randn(64, 32, requires_grad=True), torch.randn(100, 32, requires_grad=True)
    target = torch.randint(1, 100, (64,))
    linear_cross_entropy(hidden, weight, target, 0, 0.1, chunk_rows=16).backward()
    exact = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    with MatmulOperands() as recorded:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = linear_cross_entropy(hidden, weight, target, 0, 0.1, chunk_rows=16)
        loss.backward()
    dtypes = [a.dtype for a, _ in recorded.operands]
    assert dtypes and set(dtypes) == {torch.bfloat16}, dtypes
    assert hidden.grad.dtype == weight.grad.dtype == torch.float32
    torch.testing.assert_close(hidden.grad, exact[0], rtol=0, atol=2e-2 * exact[0].abs().max().item())
    torch.testing.assert_close(weight.grad, exact[1], rtol=0, atol=2e-2 * exact[1].abs().max().item())


def test_task_loss_is_the_model_logits_cross_entropy_and_nll_is_unsmoothed():
    torch.manual_seed(3)
    vocab = VocabInfo(size=30, pad_idx=0, bos_idx=1, eos_idx=2, unk_idx=3)
    model = build_model(ModelConfig(model_dim=16, num_encoder_layers=1, num_decoder_layers=1, num_encoder_attn_heads=2,
                                    num_decoder_attn_heads=2, ffn_inner_dim=32, dropout_p=0.0), vocab).eval()
    batch = collate([([4, 5, 2], [2, 6, 7, 2]), ([4, 2], [2, 8, 2])], pad_idx=0)
    logits = model(batch.source, batch.source_lengths, batch.target_input).logits()
    task = Seq2Seq(0.1, pad_idx=0)
    for (value, tokens), eps in [(task.compute_loss(model, batch), 0.1), (task.compute_nll(model, batch), 0.0)]:
        expected = F.cross_entropy(logits.flatten(0, 1), batch.target_output.flatten(), ignore_index=0,
                                   reduction="sum", label_smoothing=eps)
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)
        assert tokens == 5
