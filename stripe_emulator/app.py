"""The emulator's HTTP face: Stripe's ``/v1/...`` paths the gateway uses, and test controls under ``/_emulator/``.

``/v1`` behaves like Stripe where the project depends on it: Bearer auth with any ``sk_...`` key, form-encoded
bodies, ``Idempotency-Key`` replay, ``expand[]``, list pagination newest first, Stripe's error shape and codes
(``api.plumbing``); one blueprint per resource in ``api``. Controls play the buyer, the bank and the network
(``api.controls``).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server

from stripe_emulator.api import BLUEPRINTS
from stripe_emulator.api.plumbing import Emulator, register_errors
from stripe_emulator.delivery import WebhookSender
from stripe_emulator.state import EmulatorState


def create_app(state: EmulatorState | None = None) -> Flask:
    """A Flask app emulating Stripe over ``state`` (a fresh one by default), with its webhook sender started."""
    state = state or EmulatorState()
    sender = WebhookSender(state)
    sender.start()
    app = Flask(__name__)
    app.extensions["stripe_emulator"] = Emulator(state, sender)
    register_errors(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    return app


# -- running it ------------------------------------------------------------------------------------------------


def _stop_sender(app: Flask) -> None:
    app.extensions["stripe_emulator"].sender.stop()


def serve(host: str = "127.0.0.1", port: int = 12111) -> None:
    """Serve the emulator until SIGTERM or SIGINT; print ``stripe emulator listening on http://HOST:PORT`` first."""
    app = create_app()
    server = make_server(host, port, app, threaded=True)

    def stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever to return, so it must run on another thread than the one serving.
        threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    print(f"stripe emulator listening on http://{host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        _stop_sender(app)
        sys.stdout.flush()


class _QuietRequestHandler(WSGIRequestHandler):
    """No access log line per request: test output stays readable (errors are still logged)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def run_in_thread(host: str = "127.0.0.1", port: int = 0) -> tuple[str, Callable[[], None]]:
    """Start an emulator on a background thread (port 0: any free port); returns its base URL and a stop function."""
    app = create_app()
    server = make_server(host, port, app, threaded=True, request_handler=_QuietRequestHandler)
    # A short poll interval so that stop() (server.shutdown) returns quickly: tests start and stop many of these.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="stripe-emulator-http", daemon=True
    )
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)
        _stop_sender(app)

    return f"http://{host}:{server.server_port}", stop
