-- How much of each event type the log holds, and the newest one: a quick health view.
CREATE OR REPLACE VIEW event_types AS
SELECT type, count(*) AS events, max(created) AS last_created
  FROM events
 GROUP BY type;
