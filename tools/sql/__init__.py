"""SQL over a real database:

* ``database`` -- :class:`ReadOnlyDatabase` (queries, schema reflection and descriptions, the
  personal-data profile) and its errors;
* ``engines`` -- read-only SQLite/PostgreSQL engines, the SQLite authorizer and query limits,
  error text cleanup and identifier case alignment;
* ``results`` -- :class:`QueryResult`, per-cell byte caps, Markdown tables and SQL literals;
* ``schema`` -- ``TableInfo``/``ColumnInfo``/``ForeignKey`` and their rendering for prompts;
* ``guard`` -- the query guard;
* ``sensitive`` -- which columns a query reads that need a reviewer.
"""
