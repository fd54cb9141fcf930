"""Loaded first (`-p tests.ha_release_quirks` in pyproject's addopts): what running
pytest-homeassistant-custom-component on a Home Assistant release it does not pin needs.

(Also in addopts, `-p syrupy` before it: with 0.13.375 syrupy's own `snapshot` fixture otherwise
wins over Home Assistant's, and looks for `__snapshots__/` instead of the `snapshots/` folder
Home Assistant's extension keeps; loading syrupy first lets the plugin's override win. Can go
with the same plugin release.)

No release of the plugin pins Home Assistant 2026.11 yet; setup.sh installs 0.13.375 (made for
2026.10.4) beside 2026.11.0. Each quirk below says when it can go.
"""

from __future__ import annotations

import sys


def _home_assistant_plugin_loads() -> bool:
    # The engine's suites run with `-p no:homeassistant`: they must not get Home Assistant's
    # import aliases (below), which would change what `httpx` and `voluptuous` are for them.
    args = sys.argv[1:]
    return not any(
        a == "-pno:homeassistant" or (a == "no:homeassistant" and i and args[i - 1] == "-p")
        for i, a in enumerate(args)
    )


if _home_assistant_plugin_loads():
    # Home Assistant 2026.11 makes `httpx` an alias of `httpx2` when it is imported and refuses
    # to start if `httpx` came first; the plugin imports respx (and so httpx) before Home
    # Assistant. Importing it here, before any plugin, keeps the order right. Harmless on every
    # release; can go when the plugin imports Home Assistant first (a release for 2026.11+).
    import homeassistant  # noqa: F401
    from homeassistant.components import logger

    # 2026.11 moved `_clear_logger_overwrites` from the logger integration's package to its
    # `helpers` module, where the plugin (made for 2026.10) does not look. Can go with the
    # plugin release for 2026.11.
    if not hasattr(logger, "_clear_logger_overwrites"):
        from homeassistant.components.logger.helpers import _clear_logger_overwrites

        logger._clear_logger_overwrites = _clear_logger_overwrites  # type: ignore[attr-defined]
