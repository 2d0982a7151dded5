-- Leases (issue 7): an execution is driven, and a due timer applied, only by the engine instance
-- holding its lease (owner + expiry), so several instances on one database never run the same
-- step twice; a crashed instance's leases expire and another instance takes over.
ALTER TABLE wf_executions ADD COLUMN lease_owner TEXT;
ALTER TABLE wf_executions ADD COLUMN lease_until INTEGER;
ALTER TABLE wf_timers ADD COLUMN lease_owner TEXT;
ALTER TABLE wf_timers ADD COLUMN lease_until INTEGER;
