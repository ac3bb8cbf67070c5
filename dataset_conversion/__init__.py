"""Converters from the public lung-lesion datasets to nnU-Net v2 raw folders."""
