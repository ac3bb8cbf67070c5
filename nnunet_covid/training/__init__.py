"""nnU-Net trainers of nnunet_covid; every public trainer is re-exported here."""

__all__: list[str] = []

from .ncovsegnet_trainer import *  # noqa: E402,F401,F403
from .ncovsegnet_trainer import __all__ as _ncovsegnet_trainers  # noqa: E402
__all__ += _ncovsegnet_trainers
