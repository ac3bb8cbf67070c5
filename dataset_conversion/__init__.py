"""Converters from the public lung-lesion datasets to nnU-Net v2 raw folders.

Every converter module exposes ``CONVERT`` (its ``convert_<name>`` function), ``CLI_NAME``,
``CLI_HELP`` and ``add_arguments(parser)`` for ``nnunet-covid convert``; :mod:`.common` holds the
shared case loop and dataset writing.
"""

# Add a converter by appending its module here.
CONVERTER_MODULES: list[str] = [
    "dataset_conversion.lidc_idri",
    "dataset_conversion.covid_semiseg_2d",
    "dataset_conversion.msd_lung",
    "dataset_conversion.structseg",
    "dataset_conversion.nsclc_effusion",
    "dataset_conversion.mosmed",
    "dataset_conversion.covid19_ct_seg",
    "dataset_conversion.multilesion",
]
