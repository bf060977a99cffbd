"""The web dashboard: a FastAPI app over a workspace's run stores (``roll dashboard``).

``create_app(workspace, token)`` builds the app; ``serve(...)`` runs it with uvicorn after the
security checks (loopback by default, a token for anything that changes state).
"""

from .app import create_app
from .security import DEFAULT_HOST, DEFAULT_PORT, DashboardError
from .server import serve

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DashboardError", "create_app", "serve"]
