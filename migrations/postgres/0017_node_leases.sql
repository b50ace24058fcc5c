-- Leases by node: a node's leases on its subscriptions last as long as its own lease,
-- renewed in one row per node rather than one per subscription. A lease row of
-- `subscription_leases` is live while its node's `lease_until` has not passed (its own
-- `lease_until` column is no longer read).
ALTER TABLE nodes ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
