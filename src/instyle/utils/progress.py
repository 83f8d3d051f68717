"""What a long job tells its user while it runs: status lines, timed steps and progress.

One home for the feedback of every batch job (encode, edit, mix, interpolate, evaluate,
refine, prepare, serve's start-up), so they all look and behave the same:

* :func:`say` prints one ``instyle: ...`` line to stderr (without breaking a running bar);
  :func:`warn` the same for problems (a skipped file), printed even when quiet.
* :func:`timed` says what starts (``loading model.pt ...``) and what it took
  (``loaded model.pt (e4e, 1024 px) in 3.1s``).
* :class:`Progress` is a tqdm bar (items, rate, ETA) when stderr is a terminal and one
  plain line every ``every`` items otherwise (a log file gets a readable record, not
  carriage returns).

Everything goes to stderr; machine-readable results (summaries, printed totals) stay on
stdout and are never changed by this module. :func:`set_quiet` (the CLI's ``--quiet``)
turns all of it off; errors are not this module's business and are always printed.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, TypeVar

T = TypeVar("T")

__all__ = ["Progress", "is_quiet", "quiet", "say", "set_quiet", "timed", "track", "warn"]

_QUIET = False


def set_quiet(value: bool = True) -> None:
    """Turn every status line and progress bar of this process off (or back on)."""
    global _QUIET
    _QUIET = bool(value)


def is_quiet() -> bool:
    return _QUIET


@contextmanager
def quiet(value: bool = True) -> Iterator[None]:
    """Temporarily quiet (e.g. a command that runs another one)."""
    before = _QUIET
    set_quiet(value)
    try:
        yield
    finally:
        set_quiet(before)


def _stream() -> IO[str]:
    return sys.stderr


def say(msg: str) -> None:
    """One ``instyle: msg`` line on stderr (nothing when quiet)."""
    if _QUIET:
        return
    from tqdm import tqdm

    tqdm.write(f"instyle: {msg}", file=_stream())


def warn(msg: str) -> None:
    """One ``instyle: msg`` line on stderr even when quiet (a skipped file, a failed write),
    without breaking a running bar."""
    from tqdm import tqdm

    tqdm.write(f"instyle: {msg}", file=_stream())


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class _Timer:
    """Set ``detail`` inside a :func:`timed` block to add it to the closing line."""

    def __init__(self) -> None:
        self.detail = ""
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


#: :func:`timed` announces what it starts only when it takes longer than this (seconds), so a
#: quick step (or one that fails at once, with its one-line error) prints no start line
ANNOUNCE_AFTER = 0.5


@contextmanager
def timed(doing: str, done: str) -> Iterator[_Timer]:
    """``doing ...`` once the block has run :data:`ANNOUNCE_AFTER` seconds, and
    ``done (detail) in 1.2s`` when it ends without an error::

        with timed(f"loading {path}", f"loaded {path}") as t:
            model = ...
            t.detail = f"{model.family}, {model.output_size} px"
    """
    import threading

    timer = _Timer()
    announce = None
    if ANNOUNCE_AFTER <= 0:
        say(f"{doing} ...")
    elif not _QUIET:
        announce = threading.Timer(ANNOUNCE_AFTER, say, args=(f"{doing} ...",))
        announce.daemon = True
        announce.start()
    try:
        yield timer
    finally:
        if announce is not None:
            announce.cancel()
    say(f"{done}" + (f" ({timer.detail})" if timer.detail else "") + f" in {_duration(timer.seconds)}")


class Progress:
    """Progress of ``total`` items named ``unit`` under the label ``desc``.

    On a terminal: a tqdm bar with rate and ETA (``postfix`` values such as a loss shown at
    its end). Elsewhere: ``instyle: desc 10/24 img (0.52 img/s, ETA 27.0s)`` after the first
    item, every ``every`` items (default: about a tenth of ``total``) and the last one.
    Nothing when quiet. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self, total: int | None, desc: str, unit: str = "img", every: int | None = None, leave: bool = True, enabled: bool = True,
        initial: int = 0,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.every = every or max(1, math.ceil((total or 10) / 10))
        self.done = self.initial = initial  # items a resumed job had already done (not in the rate)
        self.postfix: dict[str, object] = {}
        self.start = time.perf_counter()
        self._bar = None
        self.enabled = enabled and not _QUIET
        stream = _stream()
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        if self.enabled and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=stream, leave=leave, dynamic_ncols=True, initial=initial)

    def update(self, n: int = 1, **postfix: object) -> None:
        self.done += n
        self.postfix.update(postfix)
        if not self.enabled:
            return
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in self.postfix.items()}, refresh=False)
            self._bar.update(n)
            return
        last = self.total is not None and self.done >= self.total
        if self.done - self.initial == n or last or self.done // self.every != (self.done - n) // self.every:
            say(self.line())

    def line(self) -> str:
        """The plain status line (what a log gets)."""
        elapsed = time.perf_counter() - self.start
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        # one form per job: items per second when fast, seconds per item when slow
        parts = [f"{rate:.2f} {self.unit}/s" if rate >= 1 or rate == 0 else f"{_duration(1 / rate)}/{self.unit}"]
        if self.total is not None and 0 < self.done < self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        elif self.total is not None and self.done >= self.total:
            parts.append(f"took {_duration(elapsed)}")
        parts += [f"{k} {_fmt(v)}" for k, v in self.postfix.items()]
        return f"{self.desc} {count} {self.unit} ({', '.join(parts)})"

    def write(self, msg: str) -> None:
        """A status line that does not break the bar."""
        say(msg)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def track(
    items: Iterable[T], desc: str, unit: str = "img", total: int | None = None, every: int | None = None, enabled: bool = True
) -> Iterator[T]:
    """``items`` with a :class:`Progress` counting each one."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(total, desc, unit, every, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.update(1)
