"""Helpers shared by the perception tests (imported as ``from perception_fixtures import ...``;
pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import torch


def identity_cameras(
    count: int, focal: float, centre: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid ``intrinsics (C, 3, 3)`` and ``extrinsics (C, 4, 4)`` of ``count`` pinhole cameras
    at the world origin looking along +z (world = camera frame), for the modules that validate
    the matrices but do not use them.

    Args:
        count: ``C``.
        focal: focal length in pixels (both axes).
        centre: ``(c_u, c_v)`` principal point in pixels.
    """
    intrinsics = torch.tensor([[focal, 0.0, centre[0]], [0.0, focal, centre[1]], [0.0, 0.0, 1.0]])
    return intrinsics.expand(count, 3, 3), torch.eye(4).expand(count, 4, 4)


def losses_before_and_after_training(
    model: torch.nn.Module,
    images: torch.Tensor,
    matrices: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    lr: float,
    seed: int,
) -> tuple[float, float]:
    """Train ``model`` (in train mode) with Adam on the auxiliary loss of one fixed batch for
    ``steps`` steps; return the loss before and after, each evaluated under ``seed`` (the same
    random warps and masks both times).

    Args:
        images: ``(B, C, 3, H, W)``.
        matrices: ``intrinsics`` and ``extrinsics`` for ``forward``.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def total_loss() -> float:
        torch.manual_seed(seed)
        with torch.no_grad():
            return model.train()(images, *matrices).total_loss().item()

    before = total_loss()
    for _ in range(steps):
        loss = model.train()(images, *matrices).total_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return before, total_loss()


def object_error(reconstructions: torch.Tensor, crops: torch.Tensor) -> tuple[float, float]:
    """Squared error on the moving objects' pixels (where a view differs from the per-pixel
    median of the batch) of ``reconstructions`` and of the mean image, which cannot place them.
    The training loss weights those pixels up (``foreground_weight``), so the background may
    still be rough when the objects are right: the whole-image error would hide that."""
    background = crops.median(dim=0, keepdim=True).values
    mask = ((crops - background).abs().sum(dim=2, keepdim=True) > 0.1).float()

    def masked(error: torch.Tensor) -> float:
        return (error * mask).sum().item() / (3 * mask.sum().item())

    mean_image = crops.mean(dim=0, keepdim=True)
    return masked((reconstructions - crops).square()), masked((mean_image - crops).square())
