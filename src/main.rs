//! The `glia` command: `serve` the web app, run a `relay`, or run a headless `node`.

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

// The library builds for wasm32; the command does not exist there.
#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::{io::Write, net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

    use clap::{Parser, Subcommand};
    use glia::native::{
        self, node,
        peer::{RelayClient, RelayClientConfig},
        relay::{self, Relay, RelayConfig},
        web,
    };
    use tokio::net::TcpListener;

    #[derive(Parser)]
    #[command(name = "glia", version, about = "A Matrix homeserver for the browser and for localhost")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Serve the built web app (shell page, Service Worker, wasm homeserver),
        /// with a relay for its nodes at /_glia/relay.
        Serve {
            #[arg(long, default_value = "127.0.0.1:8080")]
            listen: SocketAddr,
            /// The built web app, as `scripts/build-web` leaves it.
            #[arg(long, default_value = "dist")]
            root: PathBuf,
            /// Where the relay keeps its mailbox.
            #[arg(long, default_value = "glia-relay")]
            relay_data: PathBuf,
            /// Serve only the web app.
            #[arg(long)]
            no_relay: bool,
        },
        /// Run a relay: nodes connect to it to reach each other, and it keeps
        /// frames for nodes that are offline.
        Relay {
            #[arg(long, default_value = "127.0.0.1:9000")]
            listen: SocketAddr,
            /// Where the relay keeps its mailbox.
            #[arg(long, default_value = "glia-relay")]
            data: PathBuf,
        },
        /// Run a headless node: the homeserver over HTTP, for existing clients and SDKs.
        Node {
            #[arg(long, default_value = "127.0.0.1:8008")]
            listen: SocketAddr,
            /// Where the node keeps its store.
            #[arg(long, default_value = "glia-data")]
            data: PathBuf,
            /// A relay to reach other nodes through (`ws://host:port/`); repeat for several.
            #[arg(long = "relay", value_name = "URL", value_parser = relay_url)]
            relays: Vec<String>,
            /// The largest file a user may upload, in MiB.
            #[arg(long, default_value_t = 50)]
            max_upload_mib: usize,
        },
    }

    fn relay_url(url: &str) -> Result<String, String> {
        if url.starts_with("ws://") || url.starts_with("wss://") {
            Ok(url.to_owned())
        } else {
            Err("a relay URL starts with ws:// or wss://".to_owned())
        }
    }

    pub fn main() -> ExitCode {
        let cli = Cli::parse();
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime,
            Err(err) => return fail(format_args!("cannot start the async runtime: {err}")),
        };
        runtime.block_on(async {
            match cli.command {
                Command::Serve { listen, root, relay_data, no_relay } => {
                    if let Err(err) = web::check_root(&root) {
                        return fail(err);
                    }
                    let router = web::router(root);
                    if no_relay {
                        return serve(listen, "the web app", router, None).await;
                    }
                    match Relay::open(&relay_data, RelayConfig::default()).await {
                        Ok(relay) => {
                            let router = router.merge(relay.router_at(relay::PATH));
                            serve(listen, "the web app", router, Some((relay, relay::PATH))).await
                        }
                        // The web app is what `serve` is for: a relay store another
                        // `glia serve` holds is no reason to refuse it.
                        Err(err) => {
                            eprintln!(
                                "glia: serving without a relay: {err} (choose another --relay-data, or --no-relay)"
                            );
                            serve(listen, "the web app", router, None).await
                        }
                    }
                }
                Command::Relay { listen, data } => match Relay::open(&data, RelayConfig::default()).await {
                    Ok(relay) => {
                        let Some(listener) = bind(listen).await else { return ExitCode::FAILURE };
                        let addr = listener.local_addr().unwrap_or(listen);
                        // Tests read this line to learn the port when listening on port 0.
                        announce(format_args!("glia: relay at ws://{addr}/"));
                        finish(relay::run(listener, relay, ctrl_c()).await)
                    }
                    Err(err) => fail(err),
                },
                Command::Node { listen, data, relays, max_upload_mib } => match node::open(&data).await {
                    Ok(mut homeserver) => {
                        homeserver.limit_uploads(max_upload_mib.saturating_mul(1 << 20));
                        let homeserver = Arc::new(homeserver);
                        let background = homeserver.clone();
                        tokio::spawn(async move { background.run_background().await });
                        let links = (!relays.is_empty())
                            .then(|| RelayClient::start(homeserver.clone(), relays, RelayClientConfig::default()));
                        let code = serve(listen, "the homeserver", node::router(homeserver), None).await;
                        if let Some(links) = links {
                            links.shutdown().await;
                        }
                        code
                    }
                    Err(err) => fail(err),
                },
            }
        })
    }

    async fn bind(listen: SocketAddr) -> Option<TcpListener> {
        match TcpListener::bind(listen).await {
            Ok(listener) => Some(listener),
            Err(err) => {
                fail(format_args!("cannot listen on {listen}: {err}"));
                None
            }
        }
    }

    /// Serves `router`; with a relay among its routes (at the path given), ends
    /// the relay's connections and closes its store on the way out.
    async fn serve(listen: SocketAddr, what: &str, router: axum::Router, relay: Option<(Relay, &str)>) -> ExitCode {
        let Some(listener) = bind(listen).await else { return ExitCode::FAILURE };
        let addr = listener.local_addr().unwrap_or(listen);
        // Tests read this line to learn the port when listening on port 0.
        announce(format_args!("glia: serving {what} at http://{addr}/"));
        match relay {
            Some((relay, path)) => {
                announce(format_args!("glia: relay at ws://{addr}{path}"));
                finish(relay::run_with(listener, router, relay, ctrl_c()).await)
            }
            None => finish(native::run(listener, router, ctrl_c()).await),
        }
    }

    async fn ctrl_c() {
        let _ = tokio::signal::ctrl_c().await;
    }

    fn finish(result: std::io::Result<()>) -> ExitCode {
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(format_args!("server failed: {err}")),
        }
    }

    /// Prints a line for whoever started us; one who stopped reading (a test
    /// that read the address and closed the pipe) is no reason to fail.
    fn announce(line: std::fmt::Arguments) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }

    fn fail(err: impl std::fmt::Display) -> ExitCode {
        eprintln!("glia: {err}");
        ExitCode::FAILURE
    }
}
