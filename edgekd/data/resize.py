"""Splits at another (square) image size, resized in memory: the student's ``--image-size``."""

from __future__ import annotations


def at_image_size(splits, size: int | None):
    """The splits at the student's input size (square), resized in memory when they are not.

    A stopgap until the data pipeline takes the size itself (``load_data(image_size=)``).
    """
    if size is None or tuple(splits.input_shape[1:]) == (size, size):
        return splits
    import dataclasses

    import numpy as np
    import torch
    import torch.nn.functional as F

    def resize(images):
        out = []
        for i in range(0, len(images.x), 2048):
            x = torch.from_numpy(np.ascontiguousarray(images.x[i:i + 2048])).float()
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            out.append(x.round().clamp(0, 255).to(torch.uint8).numpy())
        return dataclasses.replace(images, x=np.concatenate(out) if out else images.x[:, :, :size, :size])

    return dataclasses.replace(splits, train=resize(splits.train), val=resize(splits.val), calib=resize(splits.calib),
                               test=resize(splits.test), input_shape=(splits.input_shape[0], size, size))
