"""Loss terms of the pSp training objective.

Each loss is a module (and, where natural, a function) whose docstring states its
inputs, ranges and shapes; :class:`Objective` combines them as the original's
``calc_loss`` does. The loss networks' weights come from files (never downloaded).
"""

from instyle.losses.crop import FACE_CROP, face_crop
from instyle.losses.identity import IDLoss
from instyle.losses.lpips import LPIPSLoss
from instyle.losses.moco import MocoLoss
from instyle.losses.objective import LAMBDAS, Objective, ObjectiveConfig, ObjectiveOutput, build_objective
from instyle.losses.pixel import L2Loss, l2_loss
from instyle.losses.similarity import SimilarityOutput
from instyle.losses.w_norm import WNormLoss, w_norm_loss
from instyle.losses.weights import LossWeightsError

__all__ = [
    "FACE_CROP",
    "IDLoss",
    "L2Loss",
    "LAMBDAS",
    "LPIPSLoss",
    "LossWeightsError",
    "MocoLoss",
    "Objective",
    "ObjectiveConfig",
    "ObjectiveOutput",
    "SimilarityOutput",
    "WNormLoss",
    "build_objective",
    "face_crop",
    "l2_loss",
    "w_norm_loss",
]
