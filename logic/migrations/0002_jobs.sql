-- Singleton jobs: the highest fencing token that ran each job. A job's work commits
-- only in a transaction that raised (or kept) this token, so a deposed leader with an
-- older token cannot commit after its successor.
CREATE TABLE fastim_jobs (
    job         TEXT PRIMARY KEY,
    fencing     BIGINT NOT NULL,
    last_run_ms BIGINT NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (expires_ms);
