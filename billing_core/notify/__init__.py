"""Notifications for the operators and the customers: alerts recorded here, delivered by an outbox (next)."""
