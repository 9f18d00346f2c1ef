import torch

from graph_encoders.layers import (
    SequenceEmbedding,
    TransformerEncoder,
    attention_mask,
    left_to_right_padded,
    right_to_left_padded,
)


def test_causal_mask_blocks_future_and_padding():
    valid = torch.tensor([[False, True, True, True]])
    mask = attention_mask(valid, causal=True)[0, 0]
    assert mask.shape == (4, 4)
    assert not mask[1, 2] and not mask[2, 3]  # no future keys
    assert mask[3, 1] and mask[3, 3]
    assert not mask[3, 0]  # padding key
    assert mask[0, 0]  # padding query keeps itself so softmax stays finite


def test_bidirectional_mask_sees_the_future():
    mask = attention_mask(torch.tensor([[True, True, True]]), causal=False)[0, 0]
    assert mask.all()


def test_padding_realignment_round_trips():
    x = torch.tensor([[0, 0, 5, 6], [1, 2, 3, 4], [0, 0, 0, 9]])
    lengths = torch.tensor([2, 4, 1])
    right = left_to_right_padded(x, lengths)
    assert right.tolist() == [[5, 6, 0, 0], [1, 2, 3, 4], [9, 0, 0, 0]]
    assert torch.equal(right_to_left_padded(right, lengths), x)
    x3 = torch.randn(3, 4, 2)
    assert torch.equal(right_to_left_padded(left_to_right_padded(x3, lengths), lengths), x3)


def test_causal_encoder_ignores_future_items_and_padding():
    torch.manual_seed(0)
    emb = SequenceEmbedding(n_items=10, hidden_size=8, max_len=5, dropout=0.0)
    enc = TransformerEncoder(2, hidden_size=8, num_heads=2, inner_size=16, dropout=0.0)
    enc.eval()
    a = torch.tensor([[0, 3, 4, 5, 6]])
    b = torch.tensor([[0, 3, 4, 5, 9]])  # differs only at the newest position
    ha, hb = enc(emb(a), a > 0, causal=True), enc(emb(b), b > 0, causal=True)
    assert torch.allclose(ha[:, :4], hb[:, :4], atol=1e-6)
    assert not torch.allclose(ha[:, 4], hb[:, 4])
    assert torch.isfinite(ha).all()
    # extra left padding changes nothing: padding keys are masked, positions count from the right
    short, padded = torch.tensor([[5, 6]]), torch.tensor([[0, 0, 0, 5, 6]])
    out_short = enc(emb(short), short > 0, causal=True)
    out_padded = enc(emb(padded), padded > 0, causal=True)
    assert torch.allclose(out_short, out_padded[:, -2:], atol=1e-5)
    assert not torch.allclose(out_short[:, -1], ha[:, -1])  # the longer history does matter
