"""nnunet_covid: transfer learning for COVID-19 and lung-lesion CT segmentation inside nnU-Net v2."""

__version__ = "0.1.0"
