"""Refusing work that would need more memory than the machine has, before it starts.

A request such as a 100,000 px training image or a photo doubled 40 times does not fail
cleanly: it swaps, is killed by the kernel or ends in a MemoryError gigabytes later. The
stages estimate what such a request needs (coarsely: the largest arrays it makes) and call
:func:`check_fits`, which refuses it in one line when the estimate exceeds the memory the
kernel reports as available now.
"""

from __future__ import annotations

import os

from ensemble_fer.errors import InputError

GIB = 2**30


def available_bytes() -> int | None:
    """Memory available to a new allocation now (``MemAvailable`` of ``/proc/meminfo``, else
    the free physical pages); None where neither can be read."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(needed_bytes: float, what: str) -> None:
    """Raise :class:`InputError` naming ``what`` when ``needed_bytes`` exceeds the available memory."""
    available = available_bytes()
    if available is not None and needed_bytes > available:
        raise InputError(f"{what} would need about {needed_bytes / GIB:,.1f} GiB of memory; this machine has "
                         f"{available / GIB:,.1f} GiB available")
