//! Making and starting an attempt's container, and adopting one that exists.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_core::{AdapterError, AttemptKey, ExternalRef};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum};
use bollard::models::{HostConfig, Mount, MountType};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions, UploadToContainerOptions,
};
use futures::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::config::{BATON_DIR, Pull, StageSpec};
use crate::engine::{self, ATTEMPT_LABEL, DEADLINE_LABEL, RUN_LABEL, STAGE_LABEL, failed};
use crate::record::AttemptFiles;

/// How long writing the input to the container's stdin may take: a component that never
/// reads its stdin must not hold a task forever.
const STDIN_BOUND: Duration = Duration::from_secs(60);

/// What a start or an adoption needs to know of the attempt.
pub(crate) struct Attempt<'a> {
    pub docker: &'a Docker,
    pub key: &'a AttemptKey,
    pub name: &'a str,
    pub files: &'a AttemptFiles,
}

/// What the engine stores for a container.
pub(crate) fn reference(container_id: &str, name: &str) -> ExternalRef {
    ExternalRef {
        id: container_id.to_owned(),
        url: None,
        data: json!({ "container": name }),
    }
}

/// Pulls the image when `pull` says so. A pull that fails is not retried: the image name,
/// the registry or its credentials need a person.
pub(crate) async fn ensure_image(
    docker: &Docker,
    key: &AttemptKey,
    spec: &StageSpec,
) -> Result<(), AdapterError> {
    let image = spec.image.as_str();
    let present = || async {
        match docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if engine::status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(failed(key, &format!("look for image `{image}`"), &e)),
        }
    };
    let must_pull = match spec.pull {
        Pull::Always => true,
        Pull::IfMissing => !present().await?,
        Pull::Never if present().await? => false,
        Pull::Never => {
            return Err(AdapterError::NotFound(format!(
                "docker {key}: image `{image}` is not on the engine, and `pull` is `never`"
            )));
        }
    };
    if !must_pull {
        return Ok(());
    }
    let options = CreateImageOptions {
        from_image: Some(image.to_owned()),
        ..CreateImageOptions::default()
    };
    let mut progress = docker.create_image(Some(options), None, None);
    while let Some(step) = progress.next().await {
        if let Err(e) = step {
            let lost_engine = engine::status_of(&e).is_none()
                && !matches!(e, bollard::errors::Error::DockerStreamError { .. });
            let problem = failed(key, &format!("pull image `{image}`"), &e);
            return Err(if lost_engine {
                problem
            } else {
                AdapterError::NotFound(problem.to_string())
            });
        }
    }
    Ok(())
}

/// The container's settings: the component's environment (input as `CO_DATA`, the files
/// it reads and writes, the attempt's names), the attempt's labels, stdin held open for the
/// input, the limits and mounts.
pub(crate) fn container_body(
    key: &AttemptKey,
    spec: &StageSpec,
    files: &AttemptFiles,
    timeout: Duration,
) -> ContainerCreateBody {
    let mut env = vec![
        format!("CO_DATA={}", spec.input),
        format!("BATON_INPUT={BATON_DIR}/input.json"),
        format!("BATON_OUTPUT={BATON_DIR}/output.json"),
        format!("BATON_RUN_ID={}", key.run_id()),
        format!("BATON_STAGE={}", key.stage_id()),
        format!("BATON_ATTEMPT={}", key.attempt()),
    ];
    env.extend(
        spec.env
            .iter()
            .map(|(name, value)| format!("{name}={value}")),
    );
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(timeout)
        .as_secs();
    let labels = HashMap::from([
        (ATTEMPT_LABEL.to_owned(), key.as_str().to_owned()),
        (RUN_LABEL.to_owned(), key.run_id().to_owned()),
        (STAGE_LABEL.to_owned(), key.stage_id().to_owned()),
        (DEADLINE_LABEL.to_owned(), deadline.to_string()),
    ]);
    let bind = |source: String, target: String, read_only: bool| Mount {
        source: Some(source),
        target: Some(target),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        ..Mount::default()
    };
    let mut mounts = vec![bind(
        files.input_path().to_string_lossy().into_owned(),
        format!("{BATON_DIR}/input.json"),
        true,
    )];
    mounts.extend(
        spec.mounts
            .iter()
            .map(|m| bind(m.host.clone(), m.container.clone(), m.read_only)),
    );
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        user: spec.user.clone(),
        working_dir: spec.workdir.clone(),
        entrypoint: spec.entrypoint.clone(),
        cmd: spec.command.clone(),
        env: Some(env),
        labels: Some(labels),
        attach_stdin: Some(true),
        open_stdin: Some(true),
        // The engine closes the container's stdin when the writer hangs up.
        stdin_once: Some(true),
        tty: Some(false),
        host_config: Some(HostConfig {
            memory: spec.memory,
            nano_cpus: spec.nano_cpus,
            network_mode: Some(spec.network.mode().to_owned()),
            mounts: Some(mounts),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    }
}

/// What [`create`] made.
pub(crate) enum Created {
    /// A new container with this id.
    New(String),
    /// The engine already has the attempt's container (409 Conflict): adopt it.
    Exists,
}

/// Creates the attempt's container under its name.
pub(crate) async fn create(
    attempt: &Attempt<'_>,
    body: ContainerCreateBody,
) -> Result<Created, AdapterError> {
    let options = CreateContainerOptions {
        name: Some(attempt.name.to_owned()),
        ..CreateContainerOptions::default()
    };
    match attempt.docker.create_container(Some(options), body).await {
        Ok(created) => Ok(Created::New(created.id)),
        Err(e) if engine::status_of(&e) == Some(409) => Ok(Created::Exists),
        Err(e) => Err(failed(attempt.key, "create the container", &e)),
    }
}

/// A tar holding the folder `baton/`, writable by every user (as `/tmp` is), so that the
/// component can write `$BATON_OUTPUT` whatever `user` it runs as.
fn baton_dir_tar() -> Result<Vec<u8>, std::io::Error> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_path(BATON_DIR.trim_start_matches('/'))?;
    header.set_mode(0o1777);
    header.set_size(0);
    header.set_mtime(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
    );
    header.set_cksum();
    let mut archive = tar::Builder::new(Vec::new());
    archive.append(&header, std::io::empty())?;
    archive.into_inner()
}

/// How a start that the engine refused ended.
pub(crate) enum Started {
    /// The container runs.
    Running,
    /// The engine refused to run it (the entrypoint is missing, a mount cannot be made):
    /// this message says why, and the container is left for the caller to record.
    Refused(String),
    /// A cancel came first: the container must not run.
    Cancelled,
}

/// Starts a created container: makes `/baton`, attaches to its stdin, starts it, and
/// writes `input` to its stdin (in the background, bounded).
pub(crate) async fn start_created(
    attempt: &Attempt<'_>,
    input: String,
) -> Result<Started, AdapterError> {
    let Attempt {
        docker, key, name, ..
    } = *attempt;
    let tar = baton_dir_tar()
        .map_err(|e| AdapterError::Transient(format!("docker {key}: cannot make a tar: {e}")))?;
    let upload = UploadToContainerOptions {
        path: "/".to_owned(),
        ..UploadToContainerOptions::default()
    };
    docker
        .upload_to_container(name, Some(upload), bollard::body_full(tar.into()))
        .await
        .map_err(|e| failed(key, &format!("make {BATON_DIR} in the container"), &e))?;
    // A cancel that raced this start left its marker: never let the component begin then.
    if attempt.files.cancelled().is_some() {
        return Ok(Started::Cancelled);
    }
    let attach = AttachContainerOptions {
        stdin: true,
        stream: true,
        ..AttachContainerOptions::default()
    };
    let attached = docker
        .attach_container(name, Some(attach))
        .await
        .map_err(|e| failed(key, "attach to the container's stdin", &e))?;
    match docker.start_container(name, None).await {
        Ok(()) => {}
        // Started already (by an earlier try whose answer was lost).
        Err(e) if engine::status_of(&e) == Some(304) => {}
        Err(e) if engine::status_of(&e).is_some() => {
            return Ok(Started::Refused(format!(
                "the engine could not start the container: {}",
                engine_message(&e)
            )));
        }
        Err(e) => return Err(failed(key, "start the container", &e)),
    }
    let mut stdin = attached.input;
    let key = key.clone();
    tokio::spawn(async move {
        let written = tokio::time::timeout(STDIN_BOUND, async {
            stdin.write_all(input.as_bytes()).await?;
            stdin.shutdown().await
        })
        .await;
        // A component that exits without reading its stdin closes it: that is no problem.
        if let Ok(Err(e)) = written {
            tracing::debug!(%key, error = %e, "the container did not take its stdin");
        }
        drop(attached.output);
    });
    Ok(Started::Running)
}

fn engine_message(error: &bollard::errors::Error) -> String {
    match error {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// True when the container holds the attempt `key` (a container of that name made by
/// something else must never be adopted).
pub(crate) fn holds_attempt(container: &ContainerInspectResponse, key: &AttemptKey) -> bool {
    container
        .config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .and_then(|labels| labels.get(ATTEMPT_LABEL))
        .is_some_and(|label| label == key.as_str())
}

/// The container's state, `None` when the engine did not say.
pub(crate) fn status(container: &ContainerInspectResponse) -> Option<ContainerStateStatusEnum> {
    container.state.as_ref().and_then(|s| s.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baton_folder_is_one_open_directory() {
        let bytes = baton_dir_tar().unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let entries: Vec<_> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let header = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    header.entry_type(),
                    header.mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [("baton".to_owned(), tar::EntryType::Directory, 0o1777)]
        );
    }
}
