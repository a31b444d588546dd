"""Per-track counters: integer slots, all zero at first, exported by name."""

from __future__ import annotations


class Counters:
    """Subclasses list their counter names in ``__slots__``; all start at zero."""

    __slots__: tuple[str, ...] = ()

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        """All counters by name."""
        return {name: getattr(self, name) for name in self.__slots__}
