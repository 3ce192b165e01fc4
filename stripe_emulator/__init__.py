"""A local Stripe for tests and the offline dev stack: Stripe's shapes, events and signed webhooks, no network.

``python -m stripe_emulator --port 12111`` serves it; ``run_in_thread()`` starts one inside a test process.
Point the gateway at it with ``STRIPE_API_BASE=http://127.0.0.1:12111``.
"""

from stripe_emulator.app import create_app, run_in_thread, serve
from stripe_emulator.state import EmulatorState

__all__ = ["EmulatorState", "create_app", "run_in_thread", "serve"]
