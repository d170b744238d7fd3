"""Keeping freed memory in the process: a training step allocates and frees the same large arrays over and
over, and glibc's malloc hands big blocks back to the kernel on free (mmap/trim), so that every step
faults the same pages in again, thousands of page faults a step (docs/operation.md). `keep_freed_memory()`
raises the two thresholds (mallopt) so that freed blocks are reused instead. It changes the whole process's
allocator, so TinyGPT never calls it at import: the commands that run many steps or batches call it
(`tinygpt train`, `eval`, `profile` and `bench`), a user may."""
from __future__ import annotations

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 1024 * 1024  # the largest glibc accepts on 64-bit (HEAP_MAX_SIZE / 2); larger blocks are mmapped
TRIM_THRESHOLD = 1024 * 1024 * 1024  # free heap kept before malloc trims it back to the kernel


def keep_freed_memory() -> bool:
    """Make malloc keep freed blocks of up to 32 MiB (and up to 1 GiB of free heap) for reuse; returns whether
    the allocator took the settings (False where the C library is not glibc, or cffi is missing)."""
    try:
        import cffi
    except ImportError:
        return False
    ffi = cffi.FFI()
    ffi.cdef("int mallopt(int param, int value);")
    try:
        mallopt = ffi.dlopen(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):  # no dlopen(None) (Windows) or no mallopt (macOS)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


__all__ = ["keep_freed_memory"]
