"""``bytes`` methods as module constants, for the code that runs on every request.

Compiled, ``head.split(sep)`` looks ``split`` up on the type at every call
(``_PyObject_GetMethod``), about 100 of the call's instructions; calling the method
descriptor held here goes straight to it.  Only the calls made for every request use
these: elsewhere the method reads better.
"""

from __future__ import annotations

from typing import Final

SPLIT: Final = bytes.split
PARTITION: Final = bytes.partition
