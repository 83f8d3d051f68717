"""Limits and network settings of the demo server, validated at the boundary."""

from __future__ import annotations

from dataclasses import dataclass

from instyle.utils.config import ConfigError, check_positive_int

__all__ = ["LOOPBACK_HOSTS", "ServeSettings"]

#: Hosts that keep the server private to this machine.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeSettings:
    """How ``instyle serve`` listens and what it accepts.

    Attributes:
        host: interface to bind; loopback by default (anything else exposes the demo to the network).
        port: TCP port.
        max_upload_mb: largest accepted upload in megabytes (enforced by the upload route and again
            before decoding).
        max_pixels: largest accepted image in pixels, checked from the header before decoding
            (decompression bombs).
        concurrency: model runs executed at the same time (all tabs share this limit).
        queue_size: requests allowed to wait; more are refused with a "queue full" message.
        max_mix_outputs: upper bound of the style-mixing "outputs" slider.
        max_frames: upper bound of the interpolation "frames" slider.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        directions: edit files (``[NAME=]FILE``) offered in the "Edit" tab.
        max_refine_steps: upper bound of the "Edit" tab's refinement steps slider.
    """

    host: str = "127.0.0.1"
    port: int = 7860
    max_upload_mb: float = 10.0
    max_pixels: int = 25_000_000
    concurrency: int = 1
    queue_size: int = 64
    max_mix_outputs: int = 8
    max_frames: int = 24
    device: str = "auto"
    directions: tuple[str, ...] = ()
    max_refine_steps: int = 200

    def __post_init__(self):
        if not isinstance(self.host, str) or not self.host.strip():
            raise ConfigError(f"host={self.host!r} must be a host name or IP address, e.g. 127.0.0.1")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ConfigError(f"port={self.port!r} must be an integer in [1, 65535]")
        if not self.max_upload_mb > 0:
            raise ConfigError(f"max_upload_mb={self.max_upload_mb!r} must be > 0")
        for name in ("max_pixels", "concurrency", "queue_size", "max_mix_outputs", "max_frames", "max_refine_steps"):
            check_positive_int(name, getattr(self, name))
        if self.max_frames < 2:
            raise ConfigError(f"max_frames={self.max_frames} must be >= 2 (the two endpoints)")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")
