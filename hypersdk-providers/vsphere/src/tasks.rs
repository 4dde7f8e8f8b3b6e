//! vSphere tasks: starting a `…_Task` method and waiting for it, and the
//! two snapshot tasks both the export (a temporary snapshot of a running
//! VM) and the VM operations use.

use std::time::Duration;

use hypersdk_core::{Result, TaskProgress};
use hypersdk_formats::xml::Element;

use crate::client::{permanent, Connection};
use crate::inventory;
use crate::soap::{el, MoRef};

/// How long a task may run before it is given up on.
const TASK_TIMEOUT: Duration = Duration::from_secs(3600);

fn returned_task(rv: &Element, method: &str) -> Result<MoRef> {
    rv.find("returnval")
        .and_then(MoRef::from_element)
        .ok_or_else(|| permanent(format!("{method} returned no task")))
}

/// Takes a snapshot of the VM `vm` (called `vm_name` in messages) and
/// returns its reference.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn take_snapshot(
    conn: &Connection,
    vm: &MoRef,
    vm_name: &str,
    name: &str,
    description: &str,
    memory: bool,
    quiesce: bool,
    progress: TaskProgress<'_>,
) -> Result<MoRef> {
    let body = format!(
        "{}{}{}{}{}",
        vm.xml("_this"),
        el("name", name),
        el("description", description),
        el("memory", &memory.to_string()),
        el("quiesce", &quiesce.to_string())
    );
    let what = format!("snapshot '{name}' of VM '{vm_name}'");
    let result = run_task(conn, "CreateSnapshot_Task", &body, &what, progress).await?;
    result
        .as_ref()
        .and_then(MoRef::from_element)
        .ok_or_else(|| permanent(format!("{what}: the task returned no snapshot")))
}

/// Removes snapshot `snap` (and its children if asked), consolidating disks.
pub(crate) async fn delete_snapshot(
    conn: &Connection,
    snap: &MoRef,
    what: &str,
    remove_children: bool,
    progress: TaskProgress<'_>,
) -> Result<()> {
    let body = format!(
        "{}{}{}",
        snap.xml("_this"),
        el("removeChildren", &remove_children.to_string()),
        el("consolidate", "true")
    );
    run_task(conn, "RemoveSnapshot_Task", &body, what, progress)
        .await
        .map(|_| ())
}

/// Runs a `…_Task` method and waits for it.
pub(crate) async fn run_task(
    conn: &Connection,
    method: &str,
    body: &str,
    what: &str,
    progress: TaskProgress<'_>,
) -> Result<Option<Element>> {
    let rv = conn.call(method, body).await?;
    let task = returned_task(&rv, method)?;
    inventory::wait_task(conn, &task, what, TASK_TIMEOUT, progress).await
}
