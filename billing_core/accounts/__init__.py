"""Customer accounts around the ledger: profile settings, the Stripe customer link, and API keys."""
