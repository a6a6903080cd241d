"""The gateway's routing: the table (`table`) and its sources (`source`: SQLite, `pg_source`:
PostgreSQL), the push that says "re-read now" and its acknowledgement (`notify`, `ack`), the
per-service route state (`routes`), the request-path grammar (`resolve`), the balancers
(`balancers`, `affinity`, `replica_load`) and the per-service rate limit (`ratelimit`)."""
