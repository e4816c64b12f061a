"""SQL over a real database: the read-only connection and its profile (``database``), the query
guard (``guard``) and which columns a query reads that need a reviewer (``sensitive``)."""
