-- Delivery controls (issue 19): a webhook subscription's delivery order, `entity` (one
-- at a time per entity key, in log order). NULL: none (as fast as possible).
ALTER TABLE subscriptions ADD COLUMN ordering TEXT;
