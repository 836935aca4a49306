"""The command line, the top floor: ``vmstate run|sweep|plot`` (:mod:`vmstate.cli.commands`) and
the real-kernel bridge's ``capture|kernel-run|diff`` (:mod:`vmstate.cli.kernel`)."""
from vmstate.cli.commands import main, write_outputs

__all__ = ["main", "write_outputs"]
