-- The W3C Trace Context each event's deliveries continue (null: none), kept with the
-- event so retries and deliveries after a restart join the publisher's trace.
ALTER TABLE events ADD COLUMN traceparent TEXT;
ALTER TABLE events ADD COLUMN tracestate TEXT;
