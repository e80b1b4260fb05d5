import torch

from world_modality.pipeline import random_shift


def test_random_shift_moves_content_and_keeps_shape():
    img = torch.zeros(2, 1, 3, 16, 16)
    img[:, :, :, 8, 8] = 1.0
    torch.manual_seed(0)
    out = random_shift(img, 4)
    assert out.shape == img.shape
    moved = [tuple(torch.nonzero(out[i, 0, 0])[0].tolist()) for i in range(2)]
    assert all(abs(r - 8) <= 4 and abs(c - 8) <= 4 for r, c in moved)
    assert float(out.sum()) == float(img.sum())
    assert torch.equal(random_shift(img, 0), img)


def test_random_shift_is_seeded():
    img = torch.rand(3, 2, 3, 8, 8)
    a = random_shift(img, 2, torch.Generator().manual_seed(1))
    b = random_shift(img, 2, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, img)
