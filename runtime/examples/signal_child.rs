//! A process whose drain never finishes, for `tests/signals.rs`: it watches signals like every
//! role, says when it is ready and when the first SIGTERM started its drain, then hangs, so only
//! the second signal can end it.

use runtime::shutdown::{on_signals, Shutdown};

#[tokio::main]
async fn main() {
    let shutdown = Shutdown::new();
    on_signals(&shutdown);
    println!("child: ready");
    shutdown.triggered().await;
    println!("child: draining");
    std::future::pending::<()>().await;
}
