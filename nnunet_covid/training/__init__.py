"""nnU-Net trainers of nnunet_covid; every public trainer is re-exported here."""

__all__: list[str] = []
