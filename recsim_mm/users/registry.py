"""User model registry: built-in models by name, users' own models by dotted path.

``resolve_user_model("satiation")`` returns a registered class;
``resolve_user_model("my_pkg.my_users:MyUser")`` imports ``my_pkg.my_users`` and returns
``MyUser`` after checking that it implements the `UserModel` contract.
`register_user_model` adds a name (e.g. from a plug-in package's import).
"""

from __future__ import annotations

import importlib
import inspect

from recsim_mm.users.base import CONTRACT_METHODS, UserModel
from recsim_mm.users.multimodal import (
    InterestEvolutionUser,
    MultimodalUser,
    MyopicUser,
    SatiationUser,
)

_REGISTRY: dict[str, type[UserModel]] = {}


def register_user_model(name: str, cls: type[UserModel]) -> None:
    """Make ``cls`` available under ``name``.

    Raises:
        ValueError: ``name`` is taken by another class, or contains ``":"`` (reserved
            for dotted paths).
        TypeError: ``cls`` does not implement the contract.
    """
    if ":" in name:
        raise ValueError(f"user model name {name!r} must not contain ':' (that marks a dotted path)")
    check_user_model_class(cls, where=f"user model {name!r}")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"user model name {name!r} is already registered to {_REGISTRY[name].__qualname__}")
    _REGISTRY[name] = cls


def registered_user_models() -> list[str]:
    """Sorted names of the registered user models."""
    return sorted(_REGISTRY)


def check_user_model_class(cls: object, where: str) -> None:
    """Raise `TypeError` unless ``cls`` is a concrete `UserModel` subclass.

    Args:
        cls: the candidate class.
        where: how the error names it (e.g. the dotted path it came from).
    """
    if not inspect.isclass(cls):
        raise TypeError(f"{where} is a {type(cls).__name__}, not a class; expected a UserModel subclass")
    if not issubclass(cls, UserModel):
        missing = [m for m in CONTRACT_METHODS if not callable(getattr(cls, m, None))]
        detail = f" (missing methods: {', '.join(missing)})" if missing else ""
        raise TypeError(
            f"{where} ({cls.__qualname__}) does not implement the user model contract: it must "
            f"subclass recsim_mm.users.UserModel{detail}"
        )
    abstract = sorted(getattr(cls, "__abstractmethods__", ()))
    if abstract:
        raise TypeError(
            f"{where} ({cls.__qualname__}) does not implement the user model contract: "
            f"abstract methods not implemented: {', '.join(abstract)}"
        )


def resolve_user_model(spec: str | type[UserModel]) -> type[UserModel]:
    """The user model class for a registered name, a dotted path, or a class.

    Args:
        spec: a registered name (see `registered_user_models`), a dotted path
            ``"package.module:ClassName"``, or a `UserModel` subclass.

    Raises:
        ValueError: unknown name (the registered names are listed), a malformed
            dotted path, a module that does not import, or a missing class.
        TypeError: the class does not implement the contract.
    """
    if inspect.isclass(spec):
        check_user_model_class(spec, where="user model class")
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"user model must be a name, a dotted path or a class; got {type(spec).__name__}")
    if ":" not in spec:
        if spec not in _REGISTRY:
            raise ValueError(
                f"unknown user model {spec!r}; registered names: {registered_user_models()}, "
                "or give a dotted path 'package.module:ClassName'"
            )
        return _REGISTRY[spec]
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name or ":" in class_name:
        raise ValueError(f"user model path {spec!r} is malformed; expected 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"user model path {spec!r}: module {module_name!r} does not import ({exc})") from exc
    if not hasattr(module, class_name):
        raise ValueError(f"user model path {spec!r}: module {module_name!r} has no attribute {class_name!r}")
    cls = getattr(module, class_name)
    check_user_model_class(cls, where=f"user model path {spec!r}")
    return cls


for _name, _cls in {
    "multimodal": MultimodalUser,
    "interest_evolution": InterestEvolutionUser,
    "satiation": SatiationUser,
    "myopic": MyopicUser,
}.items():
    register_user_model(_name, _cls)
