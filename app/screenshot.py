"""Screenshot a Prefect UI page in a real headless Chromium (Debian's `chromium` package).

Used by `make screenshot` so the README's picture can be taken again when the UI changes.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
)


class ScreenshotError(Exception):
    pass


def capture(url: str, output: Path, *, width: int = 1600, height: int = 1000, settle_ms: int = 15000) -> Path:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise ScreenshotError("no Chromium found: `apt-get install chromium` (Debian) first")
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="runbook-chromium-") as profile:
        # The UI is a single-page app: give its scripts virtual time to fetch and render the run.
        command = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                   f"--virtual-time-budget={settle_ms}", f"--screenshot={output}", url]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0 or not output.exists():
        raise ScreenshotError(f"chromium failed ({result.returncode}): {result.stderr[-500:]}")
    return output
