"""Stripe behind one gateway, and what each Stripe event type does to the ledger."""
