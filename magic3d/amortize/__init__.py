"""Amortized text-to-3D (ATT3D): one text-conditioned coarse field trained by SDS over a prompt set.

``train`` (``magic3d amortize``) optimises it through the stages' one loop; ``generate``
(``magic3d generate --from``) makes any prompt's asset from one forward pass; ``interpolate``
walks the conditioning between two prompts. Importing this package imports no torch.
"""
