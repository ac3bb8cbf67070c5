"""Network architectures built from nnU-Net plans keyword arguments."""
