"""What a sweep tells its terminal as shards finish."""
from __future__ import annotations

import time

from vmstate.batch.sweep.plan import ShardTask

__all__ = ["Progress", "message"]


def message(e: BaseException) -> str:
    """A shard's error in one line: ``BadInput: ...``."""
    return f"{type(e).__name__}: {e}"


class Progress:
    """A tqdm bar with ETA on a terminal; otherwise one plain line per finished shard, with an ETA
    from this invocation's pace."""

    def __init__(self, mode: str, stream, total: int, initial: int, name: str):
        if mode == "auto":
            mode = "bar" if getattr(stream, "isatty", lambda: False)() else "log"
        self.mode, self.stream, self.total, self.count, self.name = mode, stream, total, initial, name
        self.start, self.initial = time.monotonic(), initial
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="shard", file=stream,
                            desc=f"sweep {name}", dynamic_ncols=True, smoothing=0.1)
        self._log(f"{total} shard(s), {initial} already done")

    def _log(self, msg):
        if self.mode == "none":
            return
        if self.bar is not None:
            self.bar.write(f"vmstate sweep: {msg}", file=self.stream)
        else:
            print(f"vmstate sweep: {msg}", file=self.stream, flush=True)

    def note(self, msg):
        self._log(msg)

    def update(self, task: ShardTask, s: dict):
        self.count += 1
        us = s["split_us"] / s["attempted"] if s["attempted"] else 0.0
        if self.bar is not None:
            self.bar.set_postfix_str(f"{task.run.key} fail {s['failed'] / s['attempted']:.1%}, "
                                     f"{us:.2f} µs/THP", refresh=False)
            self.bar.update(1)
            return
        elapsed = time.monotonic() - self.start
        pace = elapsed / max(1, self.count - self.initial)
        eta = time.strftime("%H:%M:%S", time.gmtime(pace * (self.total - self.count)))
        shard = f" shard {task.shard + 1}/{task.shards}" if task.shards > 1 else ""
        self._log(f"[{self.count}/{self.total}] {task.run.key.replace('/', ' ')}{shard}: "
                  f"{s['attempted']} THPs, {s['failed']} failed, {us:.3f} us/THP split, "
                  f"{s['wall_us'] / 1e6:.2f} s; ETA {eta}")

    def error(self, task: ShardTask, e: BaseException):
        self._log(f"FAILED {task.run.key} shard {task.shard}: {message(e)}")

    def close(self):
        if self.bar is not None:
            self.bar.close()
