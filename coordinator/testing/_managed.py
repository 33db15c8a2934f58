"""``with thing:`` starts a tool and closes it, whatever happens inside."""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["Managed"]


class Managed:
    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()  # a half-started tool leaves nothing behind either
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
