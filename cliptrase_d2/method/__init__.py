"""CLIPtrase and its peers as pure tensor functions, free of Detectron2 (see heads.py, pipeline.py).

Importing the package registers every head in ``heads.HEADS`` (registration by import).
"""

from . import heads, peer_heads, proxyclip  # noqa: F401
