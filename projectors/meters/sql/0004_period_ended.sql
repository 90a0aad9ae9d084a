-- A period from the snapshot of a subscription that has ended (`ended_at`: canceled, its
-- period cut short there) beats any other snapshot of the same second, whatever the event
-- ids: a same-second update would otherwise give the period back its whole length.
ALTER TABLE meter_periods ADD COLUMN ended boolean NOT NULL DEFAULT false;
