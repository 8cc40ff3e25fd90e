//! `unwedge status`: a running supervisor's state from its admin endpoint (`/status`), as
//! text for an operator's terminal or as the JSON itself.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::demo::client::{request, Reply};

/// Parses the `--admin` of `unwedge status` and `unwedge reload --wait`: the forms
/// `unwedge run --admin` takes (a port alone is on 127.0.0.1, `localhost:PORT`, `HOST:PORT`,
/// `[IPv6]:PORT`), except `off`, which names no endpoint to reach.
pub(crate) fn parse_admin_target(s: &str) -> Result<SocketAddr, String> {
    const FORMS: &str = "PORT, HOST:PORT or [IPv6]:PORT, as given to `unwedge run --admin`";
    match unwedge_admin::parse_admin_addr(s) {
        Ok(Some(addr)) => Ok(addr),
        Ok(None) => Err(format!(
            "`{s}` names no admin endpoint to reach; give its address: {FORMS}"
        )),
        Err(_) => Err(format!("expected {FORMS}")),
    }
}

/// `/status` of the admin endpoint at `admin`, parsed.
pub(crate) async fn status_json(admin: SocketAddr) -> Result<Value, String> {
    // Something else on the port (Prometheus's default is 9090, unwedge's too) answers, but
    // not what unwedge would: say that it is not unwedge, not only what it answered.
    let not_unwedge = "not an unwedge admin endpoint? give the address `unwedge run --admin` \
                       uses (Prometheus listens on 9090 by default too)";
    match request(admin, "GET", "/status", b"", Duration::from_secs(5)).await {
        Reply::Status(200, body) => serde_json::from_str(&body).map_err(|e| {
            format!("{admin}/status is not the status JSON ({e}): {not_unwedge}")
        }),
        Reply::Status(code, _) => Err(format!("{admin}/status answered {code}: {not_unwedge}")),
        other => Err(format!(
            "cannot reach the admin endpoint at {admin} ({}); give the address `unwedge run --admin` uses",
            other.describe()
        )),
    }
}

/// Prints the status of the supervisor whose admin endpoint is `admin`. Exit 0 when it
/// serves (a worker is ready and it has not given up), 1 otherwise, when it cannot be
/// reached or when stdout is closed, so that scripts can test it.
pub(crate) fn status(admin: SocketAddr, json: bool) -> ExitCode {
    let fetched = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))
        .and_then(|rt| rt.block_on(status_json(admin)));
    let value = match fetched {
        Ok(v) => v,
        Err(e) => {
            crate::out::eprint_line(format_args!("unwedge: error: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let view: unwedge_admin::StatusView = match serde_json::from_value(value.clone()) {
        Ok(v) => v,
        Err(e) => {
            crate::out::eprint_line(format_args!(
                "unwedge: error: {admin}/status is not the status JSON ({e}): not an unwedge \
                 admin endpoint? give the address `unwedge run --admin` uses"
            ));
            return ExitCode::FAILURE;
        }
    };
    let text = if json {
        let pretty = serde_json::to_string_pretty(&value).expect("a JSON value serializes");
        pretty + "\n"
    } else {
        unwedge_admin::render_text(&view)
    };
    if let Err(e) = crate::out::print(text) {
        crate::out::eprint_line(format_args!("unwedge: error: {e}"));
        return ExitCode::FAILURE;
    }
    if view.is_ready() && view.is_live() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
