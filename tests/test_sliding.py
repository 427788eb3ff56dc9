"""Sliding-window placement and averaging; padding never reaches the output."""

import pytest
import torch

from cliptrase_d2.method.sliding import sliding_windows, window_boxes


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

    out = next(sliding_windows([image], predict, window=96, stride=64, batch_size=3, multiple=16))
    torch.testing.assert_close(out, image[:2] * 2 + 1)


def test_padding_never_leaks_into_the_output():
    image = torch.ones(3, 50, 70)  # smaller than the window and not a multiple of 16

    def predict(batch):
        assert batch.shape[-2] % 16 == 0 and batch.shape[-1] % 16 == 0
        # scores see the padding (zeros) wherever it is: the mean over the whole padded window
        return batch[:, :1] * 0 + (batch[:, :1] == 0).float()

    out = next(sliding_windows([image], predict, window=224, stride=112, batch_size=2, multiple=16))
    assert out.shape == (1, 50, 70)
    assert out.abs().max() == 0  # no padded pixel is part of the output


def test_window_batch_bounds_memory():
    seen = []

    def predict(batch):
        seen.append(batch.shape[0])
        return batch[:, :1]

    next(sliding_windows([torch.zeros(3, 448, 448)], predict, window=224, stride=112, batch_size=4))
    assert max(seen) == 4 and sum(seen) == 9


def test_windows_of_several_images_share_batches_and_each_image_keeps_its_own():
    """Windows go through ``predict`` batch_size at a time across image boundaries (a batch
    holds one window shape), each image's average is the one it gets alone, bit for bit, and
    is finished as soon as its last window is predicted."""

    generator = torch.Generator().manual_seed(0)
    images = [
        torch.randn(3, 250, 390, generator=generator),  # 4 x 6 = 24 windows of 96
        torch.randn(3, 100, 150, generator=generator),  # 2 x 2 = 4 windows of 96
        torch.randn(3, 80, 130, generator=generator),  # 2 windows of 80 x 96: another shape
        torch.randn(3, 200, 96, generator=generator),  # 3 x 1 windows of 96
    ]
    events = []

    def predict(batch):  # depends on the whole window (its mean), not only on each pixel
        events.append(("predict", tuple(batch.shape)))
        return batch[:, :2] * 2 + batch.mean(dim=(1, 2, 3), keepdim=True)

    results = []
    averages = sliding_windows(images, predict, window=96, stride=64, batch_size=5, multiple=16)
    for index, average in enumerate(averages):  # each yielded as soon as it is complete
        events.append(("finish", index))
        results.append((index, average))
    assert [i for i, _ in results] == [0, 1, 2, 3]
    for image, (_, average) in zip(images, results):
        alone = next(
            sliding_windows([image], predict, window=96, stride=64, batch_size=5, multiple=16)
        )
        assert average.shape == (2, *image.shape[-2:])
        assert torch.equal(average, alone)
    events = events[: events.index(("finish", 3)) + 1]  # the batched run only
    assert events == [
        *[("predict", (5, 3, 96, 96))] * 4,
        ("predict", (5, 3, 96, 96)),  # windows 21..24 of image 0 and the first of image 1
        ("finish", 0),
        ("predict", (3, 3, 96, 96)),  # image 1's last 3, closed early: image 2's are 80 x 96
        ("finish", 1),
        ("predict", (2, 3, 80, 96)),
        ("finish", 2),
        ("predict", (3, 3, 96, 96)),
        ("finish", 3),
    ]


def test_several_images_yield_the_averages_in_order():
    from cliptrase_d2.method.sliding import sliding_windows

    images = [torch.rand(3, 40, 60), torch.rand(3, 50, 30)]
    averages = sliding_windows(images, lambda b: b[:, :1] + 1, window=32, stride=16, batch_size=3)
    for image, average in zip(images, averages):
        torch.testing.assert_close(average, image[:1] + 1)
    assert list(sliding_windows([], lambda b: b, window=32, stride=16, batch_size=3)) == []
