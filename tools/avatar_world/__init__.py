"""Offline work on the avatar world (engines/avatar_world): the dataset writer and the previews.

python -m tools.avatar_world.dataset --out DIR
python -m tools.avatar_world.previews --out docs/previews
"""

_LAZY = {"write_dataset", "iter_shards", "DATA_VERSION"}


def __getattr__(name):
    # the dataset module is loaded on first use, so `python -m tools.avatar_world.dataset` runs cleanly
    if name in _LAZY:
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["write_dataset", "iter_shards", "DATA_VERSION"]
