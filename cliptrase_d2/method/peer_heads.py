"""Peer methods' heads (MaskCLIP, SCLIP, ClearCLIP, NACLIP), registered in heads.HEADS."""
