"""Errors a user can cause. The CLI prints their message, without a traceback."""


class PodiumError(Exception):
    """A problem with the user's input, named together with its fix."""


class ConfigError(PodiumError):
    """A profile or spec file is missing, malformed or holds an unknown key."""


class WarehouseError(PodiumError):
    """The warehouse refused a statement (missing table, bad SQL, bad identifier)."""


class WarehouseBusy(WarehouseError):
    """Another process held the warehouse's write lock for longer than this command would wait."""


class DataQualityError(PodiumError):
    """A data-quality check on a built table failed."""


class TrackingStoreError(PodiumError):
    """The MLflow tracking store failed while runs were written; what it holds is incomplete."""
