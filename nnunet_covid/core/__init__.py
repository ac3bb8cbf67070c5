"""The bottom layer: what every other part of nnunet_covid uses and nothing of nnunet_covid itself.

- :mod:`~nnunet_covid.core.errors`: the one error base class (:class:`NnunetCovidError`) and its kinds;
- :mod:`~nnunet_covid.core.atomic_io`: writes that never leave half a file;
- :mod:`~nnunet_covid.core.nnunet_conventions`: nnU-Net's names and folders (``DatasetXXX_Name``,
  ``<trainer>__<plans>__<configuration>``, epoch times in its logs, the ``nnUNet_extTrainer`` shim);
- :mod:`~nnunet_covid.core.nnunet_commands`: running nnU-Net's console scripts with progress.
"""
