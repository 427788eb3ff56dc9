"""Sliding-window placement and averaging; padding never reaches the output."""

import pytest
import torch

from cliptrase_d2.method.sliding import sliding_window, window_boxes


def test_windows_cover_the_image_and_end_at_the_border():
    boxes = window_boxes(336, 500, 224, 112)
    assert all(b - t == 224 and r - l == 224 for t, l, b, r in boxes)
    covered = torch.zeros(336, 500)
    for t, l, b, r in boxes:
        covered[t:b, l:r] = 1
    assert covered.all()
    assert max(b for _, _, b, _ in boxes) == 336 and max(r for _, _, _, r in boxes) == 500


def test_small_image_is_one_window():
    assert window_boxes(100, 150, 224, 112) == [(0, 0, 100, 150)]


def test_stride_larger_than_window_is_rejected():
    with pytest.raises(ValueError, match="stride"):
        window_boxes(300, 300, 100, 200)


def test_pointwise_prediction_is_unchanged_by_windowing():
    image = torch.randn(3, 250, 390)

    def predict(batch):  # a per-pixel function: windows must not change it
        return batch[:, :2] * 2 + 1

    out = sliding_window(image, predict, window=96, stride=64, batch_size=3, multiple=16)
    torch.testing.assert_close(out, image[:2] * 2 + 1)


def test_padding_never_leaks_into_the_output():
    image = torch.ones(3, 50, 70)  # smaller than the window and not a multiple of 16

    def predict(batch):
        assert batch.shape[-2] % 16 == 0 and batch.shape[-1] % 16 == 0
        # scores see the padding (zeros) wherever it is: the mean over the whole padded window
        return batch[:, :1] * 0 + (batch[:, :1] == 0).float()

    out = sliding_window(image, predict, window=224, stride=112, batch_size=2, multiple=16)
    assert out.shape == (1, 50, 70)
    assert out.abs().max() == 0  # no padded pixel is part of the output


def test_window_batch_bounds_memory():
    seen = []

    def predict(batch):
        seen.append(batch.shape[0])
        return batch[:, :1]

    sliding_window(torch.zeros(3, 448, 448), predict, window=224, stride=112, batch_size=4)
    assert max(seen) == 4 and sum(seen) == 9
