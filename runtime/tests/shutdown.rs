//! The shutdown tree: cancellation flows down, task tracking flows up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use runtime::shutdown::Shutdown;
use tokio::sync::oneshot;

const HANG: Duration = Duration::from_secs(20);

#[tokio::test]
async fn trigger_reaches_children_not_parents() {
    let root = Shutdown::new();
    let a = root.child();
    let a1 = a.child();
    let b = root.child();
    assert!(!root.is_triggered());

    a.trigger();
    assert!(a.is_triggered() && a1.is_triggered());
    assert!(!root.is_triggered() && !b.is_triggered());
    tokio::time::timeout(HANG, a1.triggered()).await.unwrap();

    root.trigger();
    assert!(b.is_triggered());
    assert!(b.token().is_cancelled());
    tokio::time::timeout(HANG, b.triggered()).await.unwrap();

    // A child of a triggered node starts triggered, and clones share the node.
    assert!(root.child().is_triggered());
    let fresh = Shutdown::default();
    let clone = fresh.clone();
    clone.trigger();
    assert!(fresh.is_triggered());
}

#[tokio::test]
async fn wait_tasks_waits_for_tracked_tasks_of_the_subtree() {
    let root = Shutdown::new();
    let child = root.child();
    let done = Arc::new(AtomicUsize::new(0));

    // Each task finishes once shutdown is triggered.
    for node in [&root, &child, &child.child()] {
        let node_clone = node.clone();
        let done = Arc::clone(&done);
        node.spawn(async move {
            node_clone.triggered().await;
            tokio::task::yield_now().await;
            done.fetch_add(1, Ordering::SeqCst);
        });
    }

    // The child's wait covers only its subtree (two tasks), released by its own trigger.
    child.trigger();
    tokio::time::timeout(HANG, child.wait_tasks())
        .await
        .unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 2);
    assert!(!root.is_triggered());

    root.trigger();
    tokio::time::timeout(HANG, root.wait_tasks()).await.unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn root_wait_includes_child_tasks() {
    let root = Shutdown::new();
    let child = root.child();
    let (release, released) = oneshot::channel::<()>();
    let handle = child.spawn(async move {
        let _ = released.await;
    });

    let mut wait = Box::pin(root.wait_tasks());
    // Not done while the child's task runs.
    for _ in 0..10 {
        tokio::task::yield_now().await;
        assert!(futures_poll_once(wait.as_mut()).await.is_none());
    }
    release.send(()).unwrap();
    tokio::time::timeout(HANG, wait).await.unwrap();
    handle.await.unwrap();
}

#[tokio::test]
async fn a_panicking_task_still_counts_as_finished() {
    let root = Shutdown::new();
    let handle = root.spawn(async { panic!("task failure for the test") });
    assert!(handle.await.unwrap_err().is_panic());
    tokio::time::timeout(HANG, root.wait_tasks()).await.unwrap();
}

/// Poll a future once: `Some` if it completed.
async fn futures_poll_once<F: std::future::Future + Unpin>(fut: F) -> Option<F::Output> {
    let mut fut = fut;
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut fut).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}
