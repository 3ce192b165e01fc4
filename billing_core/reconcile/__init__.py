"""Reconciliation against Stripe: what webhooks missed, read back from Stripe's API and applied through the
normal path (``events``); each run recorded in ``reconciliation_runs``. Paced by ``pacing``."""
