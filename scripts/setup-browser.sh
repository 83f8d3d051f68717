#!/usr/bin/env bash
# System packages for the web demo's browser test: Debian's Chromium (driven by Playwright
# with executable_path; no browser is downloaded). Quiet, idempotent, and never fatal:
# where apt is unavailable the browser test skips with its reason.
set -u
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-browser: apt-get not available; install Chromium yourself to run the browser test" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        echo "setup-browser: not root and no passwordless sudo; skipping the Chromium install" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq chromium >/dev/null 2>&1; then
    echo "setup-browser: installed $(chromium --version 2>/dev/null | head -1)"
else
    echo "setup-browser: could not install chromium with apt-get; the browser test will skip" >&2
fi
exit 0
