"""One error base, narrow subclasses (the polars habit). Expected kernel outcomes (-EBUSY) are result
codes, never exceptions: only bad input and corrupt state raise."""


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
