"""The bare baseline of ``bench.ingest``: a Flask endpoint that reads the webhook body and answers
``{"received": true}``, with no signature check, no database and no broker.

    gunicorn --workers 2 'bench.bare_app:create_app()'

Served exactly as the receiver is (same gunicorn, same flags, same client), it is the cost of the HTTP stack
alone, so ``web_rps / bare_rps`` says how much of a request the receiver's own work takes.
"""

from __future__ import annotations

from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask("bench_bare_app")

    @app.post("/webhooks/stripe")
    def stripe_webhook():
        request.get_data(cache=False)  # read the whole body, as the receiver does
        return jsonify({"received": True})

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    return app
