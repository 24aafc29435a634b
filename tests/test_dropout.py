"""The CPU dropout: right drop rate in every lane of the random bits, unbiased scaling, exact gradient,
reproducible from the seed, identity in eval mode."""

import torch

from fs2mini.dropout import Dropout, keep_mask


def test_drop_rate_is_p_in_every_position_of_the_random_words():
    torch.manual_seed(0)
    keep = keep_mask(torch.Size([400_000, 4]), 0.1)  # column j = lane j of each 64-bit random word
    rates = 1 - keep.float().mean(dim=0)
    assert torch.allclose(rates, torch.full((4,), 0.1), atol=0.002), rates  # ~4 standard deviations
    assert abs(float(1 - keep_mask(torch.Size([1_000_001]), 0.3).float().mean()) - 0.3) < 0.002


def test_training_output_and_gradient_are_masked_and_scaled():
    torch.manual_seed(1)
    x = torch.randn(257, 33, requires_grad=True)  # an odd size: the last random word is partly used
    out = Dropout(0.25).train()(x)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / 0.75)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(x.grad, kept.float() / 0.75)


def test_same_seed_same_mask_and_eval_is_identity():
    x = torch.randn(64, 64)
    torch.manual_seed(5)
    first = Dropout(0.5)(x)
    torch.manual_seed(5)
    assert torch.equal(first, Dropout(0.5)(x))
    assert Dropout(0.5).eval()(x) is x and Dropout(0.0)(x) is x


def test_bf16_output_and_gradient_are_the_masked_values_scaled_and_rounded_once():
    """The mask is kept in the activations' dtype (a bool mask made every multiplication convert it first);
    the result is exactly (x * keep) * scale rounded to bf16, forward and backward, from the same random draw."""
    x = torch.randn(37, 29, 16).bfloat16().requires_grad_()
    torch.manual_seed(3)
    out = Dropout(0.1).train()(x)
    assert out.grad_fn.saved_tensors[0].dtype == torch.bfloat16  # the saved mask: no bool → bf16 copy per use
    grad = torch.randn_like(out)
    out.backward(grad)
    torch.manual_seed(3)
    keep = keep_mask(x.shape, 0.1)
    # bit patterns, so that a dropped negative value must stay -0 as before
    assert torch.equal(out.view(torch.int16), (x.detach() * keep).mul_(1 / 0.9).view(torch.int16))
    assert torch.equal(x.grad.view(torch.int16), (grad * keep).mul_(1 / 0.9).view(torch.int16))
