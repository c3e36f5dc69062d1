-- Why a ticket ended without a result of its peer's: a result the database refused (set aside as a
-- dead letter), a job the wire cannot carry, a session that failed. Null for a ticket ended by a
-- result, or by a deadline (its state says which).
alter table tickets add column close_reason text;
