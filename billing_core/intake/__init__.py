"""Work stored before it is acknowledged: the inbox mechanism, usage reports, and Stripe events."""
