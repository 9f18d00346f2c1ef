import numpy as np
import pytest

from graph_encoders.batching import SequenceBatcher


def test_windows_train_every_transition_once(tiny_dataset):
    batcher = SequenceBatcher(tiny_dataset, max_len=4)
    windows = batcher.training_windows("all")
    seen = {}
    batch = batcher.training_batch(windows.rows)
    for _r, (k, start, end) in enumerate(windows.rows):
        assert end - start <= 5 and end <= tiny_dataset.sequences[k].valid_pos
        for t in range(start + 1, end):
            seen[(k, t)] = seen.get((k, t), 0) + 1
    expected = {(k, t) for k, s in enumerate(tiny_dataset.sequences) for t in range(1, s.valid_pos)}
    assert set(seen) == expected and set(seen.values()) == {1}
    # labels are the inputs shifted by one, and both are left-padded
    items, labels = batch.items.numpy(), batch.labels.numpy()
    assert np.array_equal(items[:, 1:][labels[:, :-1] > 0], labels[:, :-1][labels[:, :-1] > 0])
    assert ((items > 0) == (labels > 0)).all()
    assert np.array_equal((items > 0).sum(1), batch.lengths.numpy())
    assert (items[:, -1] > 0).all()


def test_newest_window_and_target_only_loss(tiny_dataset):
    batcher = SequenceBatcher(tiny_dataset, max_len=4)
    newest = batcher.training_windows("newest")
    assert len(newest.rows) == len(tiny_dataset.sequences)
    assert all(end == tiny_dataset.sequences[k].valid_pos for k, _, end in newest.rows)
    target = tiny_dataset.target_behavior_index + 1
    batch = batcher.training_batch(newest.rows, loss_on="target")
    assert batch.loss_mask.any()
    assert (batch.label_behaviors[batch.loss_mask] == target).all()
    assert not batch.loss_mask[(batch.label_behaviors != target)].any()


def test_history_batch_matches_samples(tiny_dataset):
    batcher = SequenceBatcher(tiny_dataset, max_len=6)
    users, positions = batcher.evaluation_rows("test")
    batch = batcher.history_batch(users, positions)
    assert batch.targets.tolist() == list(tiny_dataset.samples["test"]["target"])
    seq = tiny_dataset.sequences[int(users[0])]
    assert (batch.items[0].numpy() - 1).tolist() == seq.items[positions[0] - 6 : positions[0]].tolist()
    seen = batcher.seen_items(users, positions)
    assert all(int(t) not in s for t, s in zip(batch.targets, seen, strict=True))


def test_mismatched_sample_row_is_reported(tiny_dataset):
    rows = tiny_dataset.samples["test"].to_list()
    rows[2]["target"] = (rows[2]["target"] + 1) % tiny_dataset.n_items
    from datasets import Dataset

    tiny_dataset.samples["test"] = Dataset.from_list(rows)
    with pytest.raises(ValueError, match="row 2"):
        SequenceBatcher(tiny_dataset, max_len=6).evaluation_rows("test")


def test_target_only_view(tiny_dataset):
    full = SequenceBatcher(tiny_dataset, max_len=6)
    view = SequenceBatcher(tiny_dataset, max_len=6, sequence="target")
    target = tiny_dataset.target_behavior_index + 1
    users, positions = view.evaluation_rows("test")
    batch = view.history_batch(users, positions)
    assert batch.targets.tolist() == full.history_batch(users, positions).targets.tolist()
    assert (batch.behaviors[batch.valid] == target).all()
    seq = tiny_dataset.sequences[int(users[0])]
    likes = seq.items[: positions[0]][seq.behaviors[: positions[0]] == target - 1]
    assert (batch.items[0][batch.valid[0]] - 1).tolist() == likes[-6:].tolist()
    windows = view.training_windows()
    train = view.training_batch(windows.rows)
    assert (train.label_behaviors[train.labels > 0] == target).all()
    newest_end = {}
    for k, _, end in windows.rows:
        newest_end[k] = max(newest_end.get(k, 0), end)
    assert all(end == view.sequences[k].valid_pos for k, end in newest_end.items())
