"""Simulated users: the batched user model contract, the default multimodal user, the registry."""

from recsim_mm.users.base import CONTRACT_METHODS, ExpectedOutcomes, UserModel, UserResponse
from recsim_mm.users.multimodal import (
    InterestEvolutionUser,
    MultimodalUser,
    MultimodalUserConfig,
    MyopicUser,
    SatiationUser,
)
from recsim_mm.users.registry import (
    register_user_model,
    registered_user_models,
    resolve_user_model,
)

__all__ = [
    "CONTRACT_METHODS",
    "ExpectedOutcomes",
    "InterestEvolutionUser",
    "MultimodalUser",
    "MultimodalUserConfig",
    "MyopicUser",
    "SatiationUser",
    "UserModel",
    "UserResponse",
    "register_user_model",
    "registered_user_models",
    "resolve_user_model",
]
