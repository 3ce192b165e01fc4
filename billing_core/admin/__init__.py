"""The admin room: the audit log, the operators' stats, account search, adjustments. Plain Python and
SQLAlchemy, as every room of ``billing_core``: the admin API and the console are thin views over it."""
