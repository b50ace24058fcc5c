-- Delivery controls (issue 19): a subscription's rate limit, as JSON
-- ({"perSecond": n, "burst": m}). NULL: none.
ALTER TABLE subscriptions ADD COLUMN rate_limit TEXT;
