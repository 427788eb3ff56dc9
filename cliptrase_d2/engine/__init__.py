from .launch import launch

__all__ = ["launch"]
