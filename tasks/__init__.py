"""Fleet's Celery app: `celery -A tasks worker` runs a control-plane worker, `celery -A tasks beat`
the one beat. Public task names: `fleet.scale`, `fleet.status` (see tasks.public)."""

from tasks.app import app

__all__ = ["app"]
