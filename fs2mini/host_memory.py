"""Keep the memory a training step frees inside the process, for the next step to reuse.

Why: a CPU training step allocates and frees tensors of megabytes each (activations, their casts to
bf16, the loss's 512 × 8000 logit chunks, gradients). glibc's malloc returns such memory to the
kernel: blocks above its mmap threshold are unmapped when freed, and the top of the heap is trimmed
once more than its trim threshold is free. The next step then faults the same amount of fresh,
kernel-zeroed pages back in: ~17,000 page faults per update of the 256-wide `medium` model, with
40 ms of kernel time per update on 2 cores. Raised thresholds keep freed blocks in the heap; after
the first few updates a step faults no page at all (docs/results.md, "Speed on a CPU").

Only the thresholds change, through glibc's own `mallopt`, for this process; on other C libraries
(macOS, musl) nothing is done. The cost is that memory freed during training is not given back to
the system until the process exits: the process keeps the peak of what its steps needed.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's largest allowed mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX): blocks up to
# 32 MB come from the heap; larger ones are still mapped and unmapped on their own.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
"""Environment variables through which a user tunes glibc's malloc: their choice is left as it is."""


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where nothing was changed
    (the C library is not glibc, or the user set malloc's thresholds in the environment)."""
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return False
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except OSError:  # no readable interpreter binary or libc to ask: leave malloc as it is
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 for a setting it took; each is tried whatever the other did.
    took = [mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)]
    return all(took)
