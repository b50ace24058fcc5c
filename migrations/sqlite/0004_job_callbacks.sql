-- Dynamic Ingest job callbacks (seed 003) are subscriptions too: to one job's
-- notifications, delivered one at a time in publish order, until they expire. Both
-- columns are NULL for the standing subscriptions of the subscription API.
ALTER TABLE subscriptions ADD COLUMN job_id TEXT;
ALTER TABLE subscriptions ADD COLUMN expires_at INTEGER;
CREATE INDEX subscriptions_by_job ON subscriptions (account, job_id) WHERE job_id IS NOT NULL;
