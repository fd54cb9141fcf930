"""The schema library of the running Home Assistant, as `vol`.

Home Assistant 2026.11 validates with probatio (its helpers' types are probatio's, and
`voluptuous` is an alias it installs at start-up); releases before it use voluptuous. Both offer
the same names (`Schema`, `Required`, `Optional`, `All`, `Coerce`, `Range`, `In`, `Invalid`,
...), so the integration imports `vol` from here and works on either. Drop the fallback when
the oldest supported release validates with probatio.
"""

from __future__ import annotations

try:
    import probatio as vol
except ImportError:  # Home Assistant before 2026.11
    import voluptuous as vol  # type: ignore[no-redef]

__all__ = ["vol"]
