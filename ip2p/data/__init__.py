"""Datasets and test sets: readers of the real formats, pair generation, the CLIP filter."""
from ip2p.data.types import EditExample

__all__ = ["EditExample", "open_dataset", "register_dataset_kind", "ClipFilter", "EditDataset"]


def __getattr__(name):  # lazy, so `import ip2p.data` stays cheap
    if name in ("open_dataset", "register_dataset_kind", "dataset_kinds"):
        from ip2p.data import registry

        return getattr(registry, name)
    if name == "ClipFilter":
        from ip2p.data.filtering import ClipFilter

        return ClipFilter
    if name == "EditDataset":
        from ip2p.data.rows import EditDataset

        return EditDataset
    raise AttributeError(name)
