"""The ``billing`` command for operators, and the local stack it runs (``billing dev``, throwaway servers)."""
