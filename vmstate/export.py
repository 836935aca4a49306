"""``vmstate.export``, the documented name of the state dataset frames, which live in
:mod:`vmstate.io.export`."""
from vmstate.io.export import PAGEMAP_SCHEMA, PAGES_SCHEMA, pagemap_frame, pages_frame

__all__ = ["PAGEMAP_SCHEMA", "PAGES_SCHEMA", "pagemap_frame", "pages_frame"]
