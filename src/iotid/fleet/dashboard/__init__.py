"""The operator dashboard: server-rendered pages of the fleet app under ``/dashboard``.

Scope: :func:`install` (``pages``) mounts it on the operator app; ``service`` is its read model
over the slices, ``repository`` the few aggregates no slice has, ``charts`` the inline SVG plots,
``session`` the token cookie, roles and CSRF. Jinja2 templates and the stylesheet ship in the
package (``templates/``, ``static/``).

Not in scope: the operator API (the slices' routers), the device gateway, JavaScript (there is
none).
"""

from __future__ import annotations

from iotid.fleet.dashboard.pages import SERVICE_STATE_KEY, install, router
from iotid.fleet.dashboard.service import DashboardService

__all__ = ["SERVICE_STATE_KEY", "DashboardService", "install", "router"]
