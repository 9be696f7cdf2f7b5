//! The shim's lifecycle, as containerd drives every runtime v2 shim:
//! `start` spawns the serving shim (one per container, or per group of
//! containers of a Kubernetes sandbox, as runc-shim groups them) and prints
//! its address; the serving shim publishes the Task service's events to
//! containerd; `delete` cleans up after a shim that died, with what is
//! left on disk (runc-shim's `Cleanup`: `runc delete --force`, then the
//! rootfs unmounted).

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{publisher::RemotePublisher, spawn, ExitSignal, Shim};
use containerd_shim::{Config, Context, DeleteResponse, Flags, StartOpts};

use super::container::unmount_rootfs;
use super::options::{self, SavedOptions, SAVED_OPTIONS};
use super::task::{Event, TaskService};

/// The annotations runc-shim groups containers by (one shim per sandbox).
const GROUP_LABELS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

pub struct Service {
    exit: Arc<ExitSignal>,
    id: String,
    namespace: String,
}

#[async_trait]
impl Shim for Service {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            exit: Arc::default(),
            id: args.id.clone(),
            namespace: args.namespace.clone(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // The working directory is the bundle. A task's bundle has its
        // config.json; containerd 2.x starts a shim without one for a pod
        // sandbox when CRI's runtime has `sandboxer = "shim"`, and then
        // speaks the sandbox API (and task API v3), which this shim has not.
        if !std::path::Path::new("config.json").exists() {
            return Err(containerd_shim::Error::InvalidArgument(format!(
                "{}: no config.json in the bundle {}: containerd asks for a sandbox \
                 (CRI's `sandboxer = \"shim\"`), and containerd-shim-ferry-v2 has no \
                 sandbox API; set `sandboxer = \"podsandbox\"` (containerd's default) \
                 for the ferry runtime handler",
                opts.id,
                std::env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            )));
        }
        let spec = containerd_shim::util::read_spec("").await?;
        let grouping = spec
            .annotations()
            .as_ref()
            .and_then(|a| GROUP_LABELS.iter().find_map(|l| a.get(*l)))
            .cloned()
            .unwrap_or_else(|| opts.id.clone());
        let address = spawn(opts, &grouping, Vec::new()).await?;
        containerd_shim::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = std::env::current_dir()
            .map_err(|e| containerd_shim::Error::Other(format!("current dir: {e}")))?;
        // The root the task was created with (its runtime options' Root),
        // as runc-shim's cleanup reads the bundle's options.json.
        let root = std::fs::read(bundle.join(SAVED_OPTIONS))
            .ok()
            .and_then(|b| serde_json::from_slice::<SavedOptions>(&b).ok())
            .map_or_else(|| options::state_root(&self.namespace), |o| o.root);
        let id = self.id.clone();
        let rootfs = bundle.join("rootfs");
        tokio::task::spawn_blocking(move || {
            let bundle = rootfs.parent().unwrap_or(&rootfs);
            // Best effort, as runc-shim's cleanup: whatever is left goes.
            if let Ok(c) = ferry_oci::runtime::Container::load(&root, &id) {
                if let Err(e) = c.delete(true) {
                    log::warn!("deleting container {id} after its shim died: {e}");
                }
            }
            if let Err(e) = unmount_rootfs(&rootfs) {
                log::warn!("{}", e.chain());
            }
            // The dead shim's socket, as runc-shim's Stop removes it.
            if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
                let path = address.trim().trim_start_matches("unix://");
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    let _ = std::fs::remove_file(path);
                }
            }
        })
        .await
        .map_err(|e| containerd_shim::Error::Other(format!("cleanup: {e}")))?;
        // runc-shim reports the container as killed.
        Ok(DeleteResponse {
            exit_status: 137,
            exited_at: Some(containerd_shim::util::timestamp()?).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let ns = self.namespace.clone();
        tokio::spawn(async move {
            while let Some((topic, event)) = rx.recv().await {
                if let Err(e) = publisher
                    .publish(Context::default(), topic, &ns, event)
                    .await
                {
                    log::warn!("publishing {topic} to containerd: {e}");
                }
            }
        });
        // Without SIGCHLD handling the shim cannot report exits: no point
        // serving.
        TaskService::new(&self.namespace, tx, self.exit.clone())
            .expect("installing the SIGCHLD handler of the ferry shim")
    }
}
