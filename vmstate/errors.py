"""One error base, narrow subclasses (the polars habit). Expected kernel outcomes (-EBUSY) are result
codes, never exceptions: only bad input and corrupt state raise, and output that could not be
written."""
import errno as _errno
import os as _os


class VmstateError(Exception):
    """Base of every error vmstate raises on purpose."""


class BadInput(VmstateError):
    """The scenario, dataset or API call asks for something the kernel would refuse (EINVAL, ENOMEM,
    EFAULT) or the contract does not allow. ``field`` names the offending field when there is one."""

    def __init__(self, msg: str, *, field: str | None = None):
        super().__init__(msg)
        self.field = field


class CorruptState(VmstateError):
    """The simulated state breaks an invariant (the kernel's BUG()/VM_BUG_ON path). The message carries
    the values that were tested, never values read again."""

    def __init__(self, msg: str, *, pfn: int | None = None, rule: str | None = None):
        super().__init__(msg)
        self.pfn = pfn
        self.rule = rule


class OutputError(VmstateError):
    """An output could not be written (a full disk, no permission, a read-only file system): the
    file or directory ``path`` and the ``errno`` of the failing call. The writers of
    :mod:`vmstate.io.atomic` raise it after removing their temporary files, so nothing partial is
    left under a final name and the previous output stays as it was."""

    def __init__(self, path, errno_: int | None, strerror: str | None = None):
        name = _errno.errorcode.get(errno_, "") if errno_ is not None else ""
        text = strerror or (_os.strerror(errno_) if errno_ is not None else "cannot write")
        super().__init__(f"{path}: {text} ({name})" if name else f"{path}: {text}")
        self.path = path
        self.errno = errno_
