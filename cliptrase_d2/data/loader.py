"""The evaluation loader with a batch size on every Detectron2 version: Detectron2 0.6's
``build_detection_test_loader`` always gives the model one image per call (its main branch has a
``batch_size`` argument); this one is that loader with ``batch_size``, built from the pieces both
versions have."""

from typing import Callable, Dict, List, Union

import torch.utils.data as torchdata
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.data.samplers import InferenceSampler

from ..config import check_images_per_batch

__all__ = ["build_test_loader"]


def build_test_loader(
    dataset: Union[List[Dict], torchdata.Dataset],
    *,
    mapper: Callable[[Dict], Dict],
    batch_size: int = 1,
    num_workers: int = 0,
    batch_size_key: str = "TEST.IMS_PER_BATCH",
) -> torchdata.DataLoader:
    """A loader giving the model lists of ``batch_size`` mapped records (the last one shorter),
    each process its own shard of ``dataset`` in order (``InferenceSampler``, as Detectron2's
    test loader), read by ``num_workers`` processes ahead of the model (0: in this one).
    ``batch_size_key`` names the setting in the error for a batch size below 1."""
    check_images_per_batch(batch_size, batch_size_key)
    if isinstance(dataset, list):  # (an empty one: a resumed run that had predicted them all)
        dataset = DatasetFromList(dataset, copy=False, serialize=bool(dataset))
    dataset = MapDataset(dataset, mapper)
    return torchdata.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=InferenceSampler(len(dataset)) if len(dataset) else [],
        drop_last=False,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
    )
