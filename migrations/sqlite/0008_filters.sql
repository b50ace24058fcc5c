-- Delivery controls (issue 19): a subscription's payload filter (its JSON, compiled when
-- read) and its jq transform (the program's text). NULL: none.
ALTER TABLE subscriptions ADD COLUMN payload_filter TEXT;
ALTER TABLE subscriptions ADD COLUMN transform TEXT;
