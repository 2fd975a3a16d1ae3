"""Explanation-guided learning: differentiable penalties on a model's explanations, for the user's ``training_step``.

Unlike the callbacks, which never change training, these losses change it on purpose: add them to the loss
(``loss = F.cross_entropy(logits, y) + self.rrr(self, x, forbidden)``) to train a model not to use a region that
domain knowledge says is irrelevant, such as a watermark the monitor found.
"""

from lightning_xai.guidance.gradcam import GradCAMGuidance, differentiable_gradcam
from lightning_xai.guidance.right_reasons import (
    RightForTheRightReasons,
    input_gradient_penalty,
    log_probability_scores,
)

__all__ = [
    "GradCAMGuidance",
    "RightForTheRightReasons",
    "differentiable_gradcam",
    "input_gradient_penalty",
    "log_probability_scores",
]
