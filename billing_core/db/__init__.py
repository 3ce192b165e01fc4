"""Database plumbing: the engine, the unit of work, the tables, the receiver's fast event writer, and the
Redis wake-ups that tell workers stored work is waiting."""
