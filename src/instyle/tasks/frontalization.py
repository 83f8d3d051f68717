"""``frontalization`` (official ``ffhq_frontalize``): any pose -> a frontal face.

Trained as inversion, but the *target* is flipped with p=0.5 while the input is not, so the
only way to satisfy both orientations is a symmetric (frontal) face. The paper's weights
"0.8/0.01 inside the face, 0.08/0.001 elsewhere": ``--lpips_lambda=0.08 --l2_lambda=0.001
--lpips_lambda_crop=0.8 --l2_lambda_crop=0.01 --id_lambda=1 --w_norm_lambda=0.005``.
"""

from instyle.tasks.base import Task, register_task

FRONTALIZATION = register_task(
    Task(
        name="frontalization",
        description="face photo in any pose -> frontal face",
        loss={
            "lpips_lambda": 0.08,
            "l2_lambda": 0.001,
            "lpips_lambda_crop": 0.8,
            "l2_lambda_crop": 0.01,
            "id_lambda": 1.0,
            "w_norm_lambda": 0.005,
        },
        flip_target_only=True,
        hflip_pairs=False,
        metrics=("l2", "lpips", "id"),
    )
)
