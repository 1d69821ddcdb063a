-- How long an application's events (and their deliveries) are kept, in days; NULL: for good.
ALTER TABLE applications ADD COLUMN retention_days integer CHECK (retention_days BETWEEN 1 AND 36500);
