"""``inversion`` (official ``ffhq_encode``): encode a face photo and reconstruct it.

Weights from the original's published command: ``--lpips_lambda=0.8 --l2_lambda=1 --id_lambda=0.1``.
"""

from instyle.tasks.base import Task, register_task

INVERSION = register_task(
    Task(
        name="inversion",
        description="photo -> the same photo (StyleGAN inversion)",
        loss={"l2_lambda": 1.0, "lpips_lambda": 0.8, "id_lambda": 0.1},
        metrics=("l2", "lpips", "id"),
    )
)
