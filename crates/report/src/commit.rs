//! Finding the commit a run reports to in the event that started it.

use baton_core::context::commit_of;
use serde_json::Value;

/// A commit on GitHub: the repository, the SHA, and the App installation to act as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct GithubCommit {
    /// The repository's owner (user or organization).
    pub owner: String,
    /// The repository's name.
    pub repo: String,
    /// The full commit SHA.
    pub sha: String,
    /// `.installation.id`, which GitHub sends to an App's webhooks.
    pub installation: Option<u64>,
}

/// A commit on GitLab: the project, the SHA, and the branch or tag it was reported for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct GitlabCommit {
    /// The project: its numeric id, or else its `group/name` path.
    pub project: String,
    /// The full commit SHA.
    pub sha: String,
    /// The branch or tag (without `refs/heads/`), when the event names one; GitLab picks a
    /// branch that holds the commit otherwise.
    pub git_ref: Option<String>,
    /// The pipeline the event came from (a pipeline hook's `object_attributes.id`, a job
    /// hook's `pipeline_id`): the status joins that pipeline. Without one GitLab puts it on
    /// the commit's newest pipeline, which with several pipelines on one commit may be
    /// another.
    pub pipeline_id: Option<u64>,
}

/// A repository owner or name as GitHub allows them: letters, digits, `-`, `_`, `.`.
fn github_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The commit of a GitHub event ([`commit_of`]: `pull_request.head.sha` for pull requests,
/// `after` or `head_commit.id` for pushes, then the `head_sha`/`sha` of check, workflow,
/// deployment and status events); the repository from `repository.full_name`. `None` when the
/// event has no commit (a manual run, a deleted branch) or no repository.
pub(crate) fn github_commit(event: &Value) -> Option<GithubCommit> {
    let sha = commit_of(event)?;
    let (owner, repo) = match event
        .pointer("/repository/full_name")
        .and_then(Value::as_str)
    {
        Some(full) => {
            let (owner, repo) = full.split_once('/')?;
            (owner.to_owned(), repo.to_owned())
        }
        None => {
            let owner = event
                .pointer("/repository/owner/login")
                .and_then(Value::as_str)?;
            let repo = event.pointer("/repository/name").and_then(Value::as_str)?;
            (owner.to_owned(), repo.to_owned())
        }
    };
    if !github_name(&owner) || !github_name(&repo) {
        return None;
    }
    Some(GithubCommit {
        owner,
        repo,
        sha,
        installation: event.pointer("/installation/id").and_then(Value::as_u64),
    })
}

/// `refs/heads/main` → `main`, `refs/tags/v1` → `v1`; other text as it is.
fn short_ref(git_ref: &str) -> &str {
    git_ref
        .strip_prefix("refs/heads/")
        .or_else(|| git_ref.strip_prefix("refs/tags/"))
        .unwrap_or(git_ref)
}

/// The commit of a GitLab event ([`commit_of`]): merge requests' `object_attributes.last_commit.id`
/// in the source project on the source branch; pushes' `checkout_sha` (or `after`) on `ref`;
/// pipelines' `object_attributes.sha` on `object_attributes.ref`; jobs' `sha`. The project is
/// `project.id` (or `project_id`, or `project.path_with_namespace`); pipeline and job events
/// also name their pipeline. `None` when the event has no commit or no project.
pub(crate) fn gitlab_commit(event: &Value) -> Option<GitlabCommit> {
    let merge_request = event.pointer("/object_kind").and_then(Value::as_str)
        == Some("merge_request")
        || event.pointer("/object_attributes/last_commit/id").is_some();
    let sha = commit_of(event)?;
    let (project, git_ref) = if merge_request {
        (
            event
                .pointer("/object_attributes/source_project_id")
                .and_then(Value::as_u64)
                .map(|id| id.to_string()),
            event
                .pointer("/object_attributes/source_branch")
                .and_then(Value::as_str),
        )
    } else {
        (
            None,
            event
                .pointer("/object_attributes/ref")
                .or_else(|| event.pointer("/ref"))
                .and_then(Value::as_str),
        )
    };
    let project = project
        .or_else(|| {
            event
                .pointer("/project/id")
                .or_else(|| event.pointer("/project_id"))
                .and_then(Value::as_u64)
                .map(|id| id.to_string())
        })
        .or_else(|| {
            event
                .pointer("/project/path_with_namespace")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
        })?;
    let pipeline_id = match event.pointer("/object_kind").and_then(Value::as_str) {
        Some("pipeline") => event.pointer("/object_attributes/id"),
        Some("build") => event.pointer("/pipeline_id"),
        _ => None,
    }
    .and_then(Value::as_u64);
    Some(GitlabCommit {
        project,
        sha,
        git_ref: git_ref
            .map(short_ref)
            .filter(|r| !r.is_empty())
            .map(str::to_owned),
        pipeline_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
    const HEAD: &str = "89abcdef0123456789abcdef0123456789abcdef";

    fn gh(owner: &str, repo: &str, sha: &str, installation: Option<u64>) -> Option<GithubCommit> {
        Some(GithubCommit {
            owner: owner.into(),
            repo: repo.into(),
            sha: sha.into(),
            installation,
        })
    }

    #[test]
    fn github_push_pull_request_and_others() {
        let push = json!({
            "ref": "refs/heads/main", "after": SHA, "head_commit": {"id": SHA},
            "repository": {"full_name": "octo/hello", "name": "hello", "owner": {"login": "octo"}},
            "installation": {"id": 77}
        });
        assert_eq!(github_commit(&push), gh("octo", "hello", SHA, Some(77)));

        let pr = json!({
            "action": "synchronize", "before": SHA, "after": HEAD,
            "pull_request": {"head": {"sha": HEAD, "repo": {"full_name": "fork/hello"}}},
            "repository": {"full_name": "octo/hello"}
        });
        assert_eq!(github_commit(&pr), gh("octo", "hello", HEAD, None));

        let check_suite =
            json!({"check_suite": {"head_sha": SHA}, "repository": {"full_name": "o/r"}});
        assert_eq!(github_commit(&check_suite), gh("o", "r", SHA, None));
        let status = json!({"sha": SHA.to_uppercase(), "repository": {"owner": {"login": "o"}, "name": "r.js"}});
        assert_eq!(github_commit(&status), gh("o", "r.js", SHA, None));
        let head_commit_only =
            json!({"head_commit": {"id": SHA}, "repository": {"full_name": "o/r"}});
        assert_eq!(github_commit(&head_commit_only), gh("o", "r", SHA, None));
    }

    #[test]
    fn github_events_without_a_commit_are_not_reported() {
        let zeros = "0".repeat(40);
        for event in [
            json!({}),
            json!({"ref": "main"}),
            json!({"after": zeros, "deleted": true, "head_commit": null, "repository": {"full_name": "o/r"}}),
            json!({"after": SHA, "deleted": true, "repository": {"full_name": "o/r"}}),
            json!({"after": "abc123", "repository": {"full_name": "o/r"}}),
            json!({"after": SHA}),
            json!({"after": SHA, "repository": {"full_name": "nope"}}),
            json!({"after": SHA, "repository": {"full_name": "o/../x"}}),
            json!({"after": SHA, "repository": {"full_name": "o/r?x=1"}}),
            json!({"after": format!("{}/../..", &SHA[..34]), "repository": {"full_name": "o/r"}}),
        ] {
            assert_eq!(github_commit(&event), None, "{event}");
        }
    }

    fn gl(project: &str, sha: &str, git_ref: Option<&str>) -> Option<GitlabCommit> {
        Some(GitlabCommit {
            project: project.into(),
            sha: sha.into(),
            git_ref: git_ref.map(Into::into),
            pipeline_id: None,
        })
    }

    fn in_pipeline(commit: Option<GitlabCommit>, pipeline_id: u64) -> Option<GitlabCommit> {
        commit.map(|c| GitlabCommit {
            pipeline_id: Some(pipeline_id),
            ..c
        })
    }

    #[test]
    fn gitlab_push_merge_request_pipeline_and_job() {
        let push = json!({
            "object_kind": "push", "ref": "refs/heads/main", "before": HEAD, "after": SHA,
            "checkout_sha": SHA, "project_id": 15, "project": {"id": 15, "path_with_namespace": "g/p"}
        });
        assert_eq!(gitlab_commit(&push), gl("15", SHA, Some("main")));
        let tag = json!({"object_kind": "tag_push", "ref": "refs/tags/v1.0", "checkout_sha": SHA, "project_id": 3});
        assert_eq!(gitlab_commit(&tag), gl("3", SHA, Some("v1.0")));

        let mr = json!({
            "object_kind": "merge_request", "project": {"id": 1},
            "object_attributes": {"source_project_id": 9, "source_branch": "feature", "target_branch": "main",
                                  "last_commit": {"id": HEAD}}
        });
        assert_eq!(gitlab_commit(&mr), gl("9", HEAD, Some("feature")));
        let same_project_mr = json!({
            "object_kind": "merge_request", "project": {"id": 1},
            "object_attributes": {"source_branch": "feature", "last_commit": {"id": HEAD}}
        });
        assert_eq!(
            gitlab_commit(&same_project_mr),
            gl("1", HEAD, Some("feature"))
        );

        let pipeline = json!({
            "object_kind": "pipeline", "object_attributes": {"id": 31, "ref": "main", "sha": SHA},
            "project": {"id": 7}
        });
        assert_eq!(
            gitlab_commit(&pipeline),
            in_pipeline(gl("7", SHA, Some("main")), 31)
        );
        let job = json!({"object_kind": "build", "ref": "dev", "sha": SHA, "project_id": 8, "pipeline_id": 12});
        assert_eq!(
            gitlab_commit(&job),
            in_pipeline(gl("8", SHA, Some("dev")), 12)
        );
        // A pipeline id elsewhere than where the event's kind puts it is not taken.
        let push_with_id = json!({"object_kind": "push", "ref": "main", "checkout_sha": SHA, "project_id": 8, "pipeline_id": 12});
        assert_eq!(gitlab_commit(&push_with_id), gl("8", SHA, Some("main")));
        let by_path =
            json!({"checkout_sha": SHA, "project": {"path_with_namespace": "group/sub/app"}});
        assert_eq!(gitlab_commit(&by_path), gl("group/sub/app", SHA, None));
    }

    #[test]
    fn gitlab_events_without_a_commit_are_not_reported() {
        for event in [
            json!({}),
            json!({"checkout_sha": SHA}),
            json!({"checkout_sha": null, "after": "0".repeat(40), "project": {"id": 1}}),
            json!({"object_kind": "merge_request", "object_attributes": {"last_commit": {}}, "project": {"id": 1}}),
        ] {
            assert_eq!(gitlab_commit(&event), None, "{event}");
        }
    }
}
