-- Dynamic Ingest job callbacks (seed 003): subscriptions to one job's notifications.
ALTER TABLE subscriptions ADD COLUMN job_id TEXT;
ALTER TABLE subscriptions ADD COLUMN expires_at BIGINT;
CREATE INDEX subscriptions_by_job ON subscriptions (account, job_id) WHERE job_id IS NOT NULL;
