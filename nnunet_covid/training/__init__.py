"""nnU-Net trainers of nnunet_covid; every public trainer is re-exported here."""

__all__: list[str] = []

from .ncovsegnet_trainer import *  # noqa: E402,F401,F403
from .ncovsegnet_trainer import __all__ as _ncovsegnet_trainers  # noqa: E402
__all__ += _ncovsegnet_trainers

from .transfer_trainers import *  # noqa: E402,F401,F403
from .transfer_trainers import __all__ as _transfer_trainers  # noqa: E402
from .multilesion_trainers import *  # noqa: E402,F401,F403
from .multilesion_trainers import __all__ as _multilesion_trainers  # noqa: E402
__all__ += _transfer_trainers + _multilesion_trainers

from .hybrid_encoder_trainer import *  # noqa: E402,F401,F403
from .hybrid_encoder_trainer import __all__ as _hybrid_encoder_trainers  # noqa: E402
__all__ += _hybrid_encoder_trainers

from .demo_variants import *  # noqa: E402,F401,F403
from .demo_variants import __all__ as _demo_variants  # noqa: E402
__all__ += _demo_variants
