-- count_events plans its statements for each call (custom plans), not once per session: a
-- generic plan made while the tables were nearly empty (a new database's first batches) stayed
-- in every connection's cache and scanned the growing tables on each batch; on a fresh database
-- PostgreSQL then took a core and the event store fell behind at 1,000 events/s until
-- autoanalyze came round. Planning each call costs no measurable CPU per event.
ALTER FUNCTION count_events(text[], uuid[]) SET plan_cache_mode = force_custom_plan;
