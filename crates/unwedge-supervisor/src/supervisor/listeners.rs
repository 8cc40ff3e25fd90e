//! The shared listening sockets kept listening: a worker may shut one down for everyone.

use super::*;

impl Pool {
    /// Makes every TCP listener that stopped listening listen again
    /// ([`socket::listen_again`]): a worker that called `shutdown()` on the socket it was
    /// passed (cpp-httplib's `Server::stop()` does, on SIGTERM) took it out of the listening
    /// state for every worker, and every connection was refused from then on, while each
    /// worker still said it was ready. Checked when a worker exits (a server does it as it
    /// stops: at a reload, a restart) and every second (one `getsockopt` per socket); not
    /// during the supervisor's own stop. `after`: what it was checked after, for the log.
    pub(super) fn keep_listening(&mut self, after: &str) {
        if self.stopping {
            return;
        }
        for l in &self.listeners {
            let name = l.local.as_ref().map_or(l.name.clone(), ToString::to_string);
            match socket::listen_again(l) {
                Ok(socket::Listening::Yes) => {}
                Ok(socket::Listening::Restored) => {
                    self.counters.listen_restored += 1;
                    tracing::warn!(
                        "the listening socket {name} had stopped listening ({after}): a worker \
                         shut it down (shutdown() on the socket it was passed, as cpp-httplib's \
                         Server::stop() does), which refuses every connection for all workers; \
                         it listens again. Make the server close its listening socket when it \
                         stops, not shut it down (see Sockets in docs/supervisor.md)"
                    );
                }
                Err(e) => {
                    if self.relisten_told.due(Instant::now(), TELL_EVERY) {
                        tracing::error!(
                            "the listening socket {name} stopped listening (a worker shut it \
                             down) and cannot listen again: {e}; connections to it are refused \
                             (said at most once a minute)"
                        );
                    }
                }
            }
        }
    }
}
