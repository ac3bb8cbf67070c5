"""Network architectures built from nnU-Net plans keyword arguments."""

from .ncovsegnet import NCoVSegNet  # noqa: E402,F401
from .selective_fusion import SelectiveFusion  # noqa: E402,F401
from .hybrid_encoder_unet import HybridEncoderUNet, HybridResidualEncoderUNet  # noqa: E402,F401
