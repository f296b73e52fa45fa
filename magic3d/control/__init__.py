"""Control over what is made: edit a finished run by prompt (``plan.edit``), start the coarse
density from the user's shape (``init_shape``), and texture the user's own mesh (``plan.texture``,
``texture_mesh``). ``user_mesh`` reads and places the user's file; ``config`` is the ``control``
section of the run config; ``cli`` registers ``magic3d edit`` and ``magic3d texture``.

Kept empty of imports: the config and the CLI import parts of it, and refusing bad input must not
import torch."""
