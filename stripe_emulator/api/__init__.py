"""The emulator's endpoints, one blueprint per Stripe resource, plus the ``/_emulator/`` controls."""

from stripe_emulator.api.billing import billing
from stripe_emulator.api.billing_pages import billing_pages
from stripe_emulator.api.catalog import catalog
from stripe_emulator.api.checkout import checkout
from stripe_emulator.api.checkout_page import checkout_page
from stripe_emulator.api.controls import controls
from stripe_emulator.api.customers import customers
from stripe_emulator.api.disputes import disputes
from stripe_emulator.api.events import events
from stripe_emulator.api.payments import payments

BLUEPRINTS = (
    customers,
    catalog,
    checkout,
    payments,
    billing,
    disputes,
    events,
    controls,
    checkout_page,
    billing_pages,
)
