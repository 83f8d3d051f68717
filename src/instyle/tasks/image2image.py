"""``image2image``: any paired translation from user-given input and target folders.

Official checkpoints whose ``dataset_type`` has no dedicated preset (``ffhq_aging``,
``toonify``, custom ones) map here. Inputs are RGB images in ``[-1, 1]``, paired with targets
by file name (``instyle prepare image2image --inputs DIR``). Weights as the conditional
synthesis commands (``--lpips_lambda=0.8 --l2_lambda=1 --w_norm_lambda=0.005``); set
``id_lambda`` when identity should be kept.
"""

from instyle.tasks.base import Task, register_task

IMAGE2IMAGE = register_task(
    Task(
        name="image2image",
        description="user-given input images -> user-given target images (paired by file name)",
        loss={"lpips_lambda": 0.8, "l2_lambda": 1.0, "w_norm_lambda": 0.005},
        needs_source=True,
        metrics=("l2", "lpips"),
    )
)
