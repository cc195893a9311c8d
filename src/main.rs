//! The `glia` command: `serve` the web app, or run a headless `node`.

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

// The library builds for wasm32; the command does not exist there.
#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

    use clap::{Parser, Subcommand};
    use glia::native::{self, node, web};
    use tokio::net::TcpListener;

    #[derive(Parser)]
    #[command(name = "glia", version, about = "A Matrix homeserver for the browser and for localhost")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Serve the built web app (shell page, Service Worker, wasm homeserver).
        Serve {
            #[arg(long, default_value = "127.0.0.1:8080")]
            listen: SocketAddr,
            /// The built web app, as `scripts/build-web` leaves it.
            #[arg(long, default_value = "dist")]
            root: PathBuf,
        },
        /// Run a headless node: the homeserver over HTTP, for existing clients and SDKs.
        Node {
            #[arg(long, default_value = "127.0.0.1:8008")]
            listen: SocketAddr,
            /// Where the node keeps its store.
            #[arg(long, default_value = "glia-data")]
            data: PathBuf,
        },
    }

    pub fn main() -> ExitCode {
        let cli = Cli::parse();
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime,
            Err(err) => return fail(format_args!("cannot start the async runtime: {err}")),
        };
        runtime.block_on(async {
            match cli.command {
                Command::Serve { listen, root } => {
                    if let Err(err) = web::check_root(&root) {
                        return fail(err);
                    }
                    serve(listen, "the web app", web::router(root)).await
                }
                Command::Node { listen, data } => match node::open(&data).await {
                    Ok(homeserver) => serve(listen, "the homeserver", node::router(Arc::new(homeserver))).await,
                    Err(err) => fail(err),
                },
            }
        })
    }

    async fn serve(listen: SocketAddr, what: &str, router: axum::Router) -> ExitCode {
        let listener = match TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(err) => return fail(format_args!("cannot listen on {listen}: {err}")),
        };
        let addr = listener.local_addr().unwrap_or(listen);
        // Tests read this line to learn the port when listening on port 0.
        println!("glia: serving {what} at http://{addr}/");
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        match native::run(listener, router, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(format_args!("server failed: {err}")),
        }
    }

    fn fail(err: impl std::fmt::Display) -> ExitCode {
        eprintln!("glia: {err}");
        ExitCode::FAILURE
    }
}
