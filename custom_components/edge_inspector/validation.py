"""The schema library of the running Home Assistant, as `vol`.

Home Assistant 2026.11 validates with probatio: `voluptuous` is an alias of it that Home
Assistant installs when it is imported (before any integration), and its helpers are typed with
probatio's classes. Releases before it use voluptuous itself. Importing `voluptuous` is right on
both at run time; the type checker, which runs against the current release, sees probatio.
Drop this module for `import probatio as vol` when the oldest supported release is 2026.11.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import probatio as vol
else:
    import voluptuous as vol

__all__ = ["vol"]
