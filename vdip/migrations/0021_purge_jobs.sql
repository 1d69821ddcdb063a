-- An application's deletion is a job too: its data purged, a batch at a time.
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('replay', 'purge'));
