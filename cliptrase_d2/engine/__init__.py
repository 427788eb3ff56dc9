from .launch import launch, resolve_device

__all__ = ["launch", "resolve_device"]
