"""The console's app-wide hooks, as a blueprint: authentication, read-only mode and CSRF before
every request; security headers after; the error handlers (one error shape for every failure,
503 and what is down for a lost Redis); the templates' common values."""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

import redis
from flask import Blueprint, Response, jsonify, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from fleet.console.charts import age
from fleet.console.context import bearer_ok, console, failure, outage, wants_json

# the name the log had when these hooks lived in app.py: log filters keep working
log = logging.getLogger("fleet.console.app")

bp = Blueprint("guard", __name__)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
#: the routes that need no authentication, and whose answers say nothing of Redis
UNGUARDED = "views.healthz"


@bp.before_app_request
def guard() -> Any:
    """With a token, every route but /healthz needs it (basic auth password, or a bearer
    token); a POST is refused in read-only mode and needs a CSRF token unless it came with a
    bearer token."""
    if request.endpoint == UNGUARDED:
        return None
    settings = console().settings
    if settings.token and not bearer_ok():
        basic = request.authorization
        given = (basic.password or "") if basic and basic.type == "basic" else ""
        if not hmac.compare_digest(given.encode(), settings.token.encode()):
            challenge = {"WWW-Authenticate": 'Basic realm="fleet console"'}
            if wants_json():
                return jsonify(error="authentication required"), 401, challenge
            return Response("authentication required\n", 401, challenge)
    if request.method == "POST":
        if settings.read_only:
            return failure("the console is read-only", 403)
        if not bearer_ok():
            console().csrf.protect()
    return None


@bp.after_app_request
def headers(resp: Response) -> Response:
    resp.headers.update(SECURITY_HEADERS)
    if resp.status_code < 500 and request.endpoint not in (UNGUARDED, "static"):
        console().noted.over("Redis")  # a page was read: Redis answers again
    return resp


@bp.app_errorhandler(CSRFError)
def csrf_failed(exc: CSRFError) -> Any:
    return failure(f"refused: {exc.description}", 400)


@bp.app_errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Any:  # 404, 405, ...: the same error shape as the others
    return failure(str(exc.description or exc.name), exc.code or 500)


@bp.app_errorhandler(Exception)
def unexpected(exc: Exception) -> Any:
    if isinstance(exc, HTTPException):
        return http_error(exc)
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return outage(console().health.redis_down(exc), "Redis")
    log.exception("console: %s %s failed", request.method, request.path)
    return failure(f"internal error ({type(exc).__name__}); see the console's log", 500)


@bp.app_context_processor
def helpers() -> dict[str, Any]:
    c = console()
    return {"fleet": c.config.fleet.id, "read_only": c.settings.read_only, "refresh_ms": int(c.refresh * 1000),
            "age": age, "now": time.time()}
