-- Indexes for the sorted, filtered task lists (keyset pages per project).
CREATE INDEX tasks_project_due ON tasks (project_id, COALESCE(due_date, DATE '9999-12-31'), id);
CREATE INDEX tasks_project_priority ON tasks (project_id, priority, id);
CREATE INDEX tasks_project_updated ON tasks (project_id, updated_at, id);
