-- What the runs list shows of each run besides its header: what started it and the commit
-- it is about, in columns of their own so that a page of runs reads no event. Written with
-- the run (`Change::InsertRun`); runs stored before are filled from their stored trigger
-- and event here, finding the commit as `baton_core::context::commit_of` does.
ALTER TABLE runs ADD COLUMN trigger_source TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN trigger_event TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN trigger_delivery TEXT;
ALTER TABLE runs ADD COLUMN commit_sha TEXT;

-- `value` as a full commit SHA in lower case, if it is one (`baton_core::context::full_sha`).
CREATE FUNCTION pg_temp.baton_full_sha(value JSONB) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT lower(value #>> '{}')
    WHERE jsonb_typeof(value) = 'string'
      AND (value #>> '{}') ~ '^([0-9a-fA-F]{40}|[0-9a-fA-F]{64})$'
      AND (value #>> '{}') ~ '[1-9a-fA-F]'
$$;

-- Events are parsed as jsonb once per run. jsonb refuses the escape of a NUL character,
-- which a stored event may hold in some string: such a run is left without a commit.
UPDATE runs SET trigger_source = COALESCE(t ->> 'source', ''),
                trigger_event = COALESCE(t ->> 'event', ''),
                trigger_delivery = t ->> 'delivery_id',
                commit_sha = CASE
                    WHEN jsonb_typeof(e) <> 'object' OR e -> 'deleted' = 'true'::jsonb THEN NULL
                    ELSE COALESCE(
                        pg_temp.baton_full_sha(e #> '{pull_request,head,sha}'),
                        pg_temp.baton_full_sha(e #> '{object_attributes,last_commit,id}'),
                        pg_temp.baton_full_sha(e -> 'checkout_sha'),
                        pg_temp.baton_full_sha(e #> '{object_attributes,sha}'),
                        pg_temp.baton_full_sha(e -> 'after'),
                        pg_temp.baton_full_sha(e #> '{head_commit,id}'),
                        pg_temp.baton_full_sha(e #> '{check_suite,head_sha}'),
                        pg_temp.baton_full_sha(e #> '{check_run,head_sha}'),
                        pg_temp.baton_full_sha(e #> '{workflow_run,head_sha}'),
                        pg_temp.baton_full_sha(e #> '{workflow_job,head_sha}'),
                        pg_temp.baton_full_sha(e #> '{merge_group,head_sha}'),
                        pg_temp.baton_full_sha(e #> '{deployment,sha}'),
                        pg_temp.baton_full_sha(e -> 'sha'),
                        pg_temp.baton_full_sha(e -> 'commit'),
                        pg_temp.baton_full_sha(e #> '{commit,sha}'))
                END
FROM (SELECT id AS run,
             trigger_info::json AS t,
             CASE WHEN strpos(event, '\u0000') = 0 THEN event::jsonb END AS e
      FROM runs) AS parsed
WHERE runs.id = parsed.run;

DROP FUNCTION pg_temp.baton_full_sha(JSONB);

-- The unfiltered list, newest first, paged by (created_at, id); the filtered lists order
-- by the same key after their filter.
CREATE INDEX runs_by_created ON runs (created_at, id);
DROP INDEX runs_by_status;
CREATE INDEX runs_by_status ON runs (status, created_at, id);
DROP INDEX runs_by_workflow;
CREATE INDEX runs_by_workflow ON runs (workflow, created_at, id);

-- Deliveries of one source, newest first, paged by id.
CREATE INDEX deliveries_by_source ON deliveries (source, seq);
