"""nnU-Net trainers of nnunet_covid; every public trainer is re-exported here (the ``nnUNet_extTrainer`` shim
imports this package, so nnU-Net finds exactly these classes)."""

from .hybrid_encoder_trainer import *  # noqa: F401,F403
from .hybrid_encoder_trainer import __all__ as _hybrid
from .multilesion_trainers import *  # noqa: F401,F403
from .multilesion_trainers import __all__ as _multilesion
from .ncovsegnet_trainer import *  # noqa: F401,F403
from .ncovsegnet_trainer import __all__ as _ncovsegnet
from .transfer_trainers import *  # noqa: F401,F403
from .transfer_trainers import __all__ as _transfer
from .variants import *  # noqa: F401,F403
from .variants import __all__ as _variants

__all__ = [*_ncovsegnet, *_transfer, *_multilesion, *_hybrid, *_variants]
