-- What the runs list shows of each run besides its header: what started it and the commit
-- it is about, in columns of their own so that a page of runs reads no event. Written with
-- the run (`Change::InsertRun`); runs stored before are filled from their stored trigger
-- and event here, finding the commit as `baton_core::context::commit_of` does.
ALTER TABLE runs ADD COLUMN trigger_source TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN trigger_event TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN trigger_delivery TEXT;
ALTER TABLE runs ADD COLUMN commit_sha TEXT;

UPDATE runs SET trigger_source = COALESCE(json_extract(trigger_info, '$.source'), ''),
                trigger_event = COALESCE(json_extract(trigger_info, '$.event'), ''),
                trigger_delivery = json_extract(trigger_info, '$.delivery_id');

WITH commit_paths (rank, path) AS (VALUES
    (1, '$.pull_request.head.sha'),
    (2, '$.object_attributes.last_commit.id'),
    (3, '$.checkout_sha'),
    (4, '$.object_attributes.sha'),
    (5, '$.after'),
    (6, '$.head_commit.id'),
    (7, '$.check_suite.head_sha'),
    (8, '$.check_run.head_sha'),
    (9, '$.workflow_run.head_sha'),
    (10, '$.workflow_job.head_sha'),
    (11, '$.merge_group.head_sha'),
    (12, '$.deployment.sha'),
    (13, '$.sha'),
    (14, '$.commit'),
    (15, '$.commit.sha'))
UPDATE runs SET commit_sha = (
    SELECT lower(sha) FROM (
        SELECT rank, json_extract(runs.event, path) AS sha FROM commit_paths
        WHERE json_type(runs.event, path) = 'text')
    WHERE length(sha) IN (40, 64) AND sha NOT GLOB '*[^0-9a-fA-F]*' AND sha GLOB '*[1-9a-fA-F]*'
    ORDER BY rank LIMIT 1)
WHERE json_type(event) = 'object' AND json_type(event, '$.deleted') IS NOT 'true';

-- The unfiltered list, newest first, paged by (created_at, id); the filtered lists order
-- by the same key after their filter.
CREATE INDEX runs_by_created ON runs (created_at, id);
DROP INDEX runs_by_status;
CREATE INDEX runs_by_status ON runs (status, created_at, id);
DROP INDEX runs_by_workflow;
CREATE INDEX runs_by_workflow ON runs (workflow, created_at, id);

-- Deliveries of one source, newest first, paged by id.
CREATE INDEX deliveries_by_source ON deliveries (source, seq);
