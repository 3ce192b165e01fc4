"""The double-entry credit ledger: the book and its postings, commands and their handlers, grants and the
spending order, balances and history, and the invariant checks."""
