//! The five sockets of a Jupyter kernel on ZeroMQ (pure Rust, on tokio): shell (ROUTER:
//! requests), control (ROUTER: interrupt and shutdown, served while a cell runs), stdin (ROUTER:
//! bound, input is not requested), IOPub (PUB: status, streams, results) and heartbeat (REP:
//! echo). Each message on shell is framed by `busy` and `idle` statuses on IOPub.

use std::collections::VecDeque;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::CancelFlag;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use zeromq::{PubSocket, RepSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use super::capture::Capture;
use super::connection::Connection;
use super::wire::{Message, Signer, PROTOCOL_VERSION};
use super::worker::Job;

/// What the sockets share.
#[derive(Clone)]
pub struct Shared {
    pub signer: Signer,
    pub iopub: UnboundedSender<Message>,
    pub jobs: Sender<Job>,
    pub cancel: CancelFlag,
    pub capture: Arc<Capture>,
}

fn frames(message: ZmqMessage) -> Vec<Vec<u8>> {
    message.into_vec().into_iter().map(|b| b.to_vec()).collect()
}

async fn bind<S: Socket>(
    socket: &mut S,
    connection: &Connection,
    port: u16,
    name: &str,
) -> Result<(), String> {
    let endpoint = connection.endpoint(port);
    socket
        .bind(&endpoint)
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot bind the {name} socket to {endpoint}: {e}"))
}

/// Binds every socket, then serves until a shutdown request ends the process.
pub async fn serve(
    connection: Connection,
    shared: Shared,
    mut outgoing: UnboundedReceiver<Message>,
) -> Result<(), String> {
    let mut iopub = PubSocket::new();
    bind(&mut iopub, &connection, connection.iopub_port, "iopub").await?;
    let mut shell = RouterSocket::new();
    bind(&mut shell, &connection, connection.shell_port, "shell").await?;
    let mut control = RouterSocket::new();
    bind(
        &mut control,
        &connection,
        connection.control_port,
        "control",
    )
    .await?;
    let mut stdin = RouterSocket::new();
    bind(&mut stdin, &connection, connection.stdin_port, "stdin").await?;
    let mut heartbeat = RepSocket::new();
    bind(&mut heartbeat, &connection, connection.hb_port, "heartbeat").await?;

    let signer = shared.signer.clone();
    let capture = shared.capture.clone();
    tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            if let Err(error) = iopub.send(message.encode(&signer)).await {
                capture.log(&format!("iopub send failed: {error}"));
            }
        }
    });
    tokio::spawn(async move {
        while let Ok(ping) = heartbeat.recv().await {
            if heartbeat.send(ping).await.is_err() {
                break;
            }
        }
    });
    // Input requests are never sent; anything arriving on stdin is read and dropped.
    tokio::spawn(async move { while stdin.recv().await.is_ok() {} });
    let control_shared = shared.clone();
    tokio::spawn(async move {
        loop {
            match control.recv().await {
                Ok(received) => {
                    if let Some(reply) = control_shared.handle_control(received) {
                        let _ = control.send(reply.encode(&control_shared.signer)).await;
                        if reply.msg_type() == "shutdown_reply" {
                            exit_soon().await;
                        }
                    }
                }
                Err(error) => control_shared.capture.log(&format!("control: {error}")),
            }
        }
    });
    let _ = shared.iopub.send(Message::orphan(
        &super::wire::new_id(),
        "status",
        json!({ "execution_state": "starting" }),
    ));
    // After a failed cell with `stop_on_error`, the cells already waiting behind it ("Run All")
    // are answered `aborted` instead of run, as ipykernel does. They are the requests received
    // before the failed cell's reply is sent: a client that waits for that reply and then sends
    // the next cell is served as usual.
    // Requests waiting behind a failed cell: all to be aborted.
    let mut backlog: VecDeque<Message> = VecDeque::new();
    loop {
        let (request, abort) = match backlog.pop_front() {
            Some(request) => (request, true),
            None => {
                let received = shell
                    .recv()
                    .await
                    .map_err(|e| format!("shell socket: {e}"))?;
                match Message::decode(frames(received), &shared.signer) {
                    Ok(request) => (request, false),
                    Err(error) => {
                        shared
                            .capture
                            .log(&format!("shell: message dropped: {error}"));
                        continue;
                    }
                }
            }
        };
        shared.status(&request, "busy");
        let reply = if abort && request.msg_type() == "execute_request" {
            Some(request.reply(json!({ "status": "aborted", "execution_count": null })))
        } else {
            shared.handle_shell(&request).await
        };
        if let Some(reply) = &reply {
            if reply.msg_type() == "execute_reply"
                && reply.content["status"] == "error"
                && request.content["stop_on_error"].as_bool().unwrap_or(true)
            {
                // tokio's timeout polls the receive once before looking at the clock: this takes
                // exactly the requests already waiting.
                while let Ok(Ok(received)) =
                    tokio::time::timeout(Duration::ZERO, shell.recv()).await
                {
                    match Message::decode(frames(received), &shared.signer) {
                        Ok(waiting) => backlog.push_back(waiting),
                        Err(error) => shared
                            .capture
                            .log(&format!("shell: message dropped: {error}")),
                    }
                }
            }
            if let Err(error) = shell.send(reply.encode(&shared.signer)).await {
                shared.capture.log(&format!("shell send failed: {error}"));
            }
        }
        shared.status(&request, "idle");
        if reply
            .as_ref()
            .is_some_and(|r| r.msg_type() == "shutdown_reply")
        {
            exit_soon().await;
        }
    }
}

/// Lets the last replies leave, then ends the process (the session thread may still be busy).
async fn exit_soon() {
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::process::exit(0);
}

impl Shared {
    fn status(&self, parent: &Message, state: &str) {
        let _ = self
            .iopub
            .send(parent.broadcast("status", json!({ "execution_state": state })));
    }

    async fn handle_shell(&self, request: &Message) -> Option<Message> {
        let content = match request.msg_type() {
            "kernel_info_request" => kernel_info(),
            "execute_request" | "complete_request" | "inspect_request" | "is_complete_request" => {
                let (done, result) = oneshot::channel();
                if self
                    .jobs
                    .send(Job {
                        request: request.clone(),
                        done,
                    })
                    .is_err()
                {
                    return Some(request.reply(json!({ "status": "error", "ename": "KernelDead", "evalue": "the session thread ended", "traceback": [] })));
                }
                result.await.unwrap_or_else(|_| {
                    json!({ "status": "error", "ename": "KernelDead", "evalue": "the session thread ended", "traceback": [] })
                })
            }
            "comm_info_request" => json!({ "status": "ok", "comms": {} }),
            "history_request" => json!({ "status": "ok", "history": [] }),
            "shutdown_request" | "interrupt_request" => {
                return self.handle_control_message(request);
            }
            // Widgets' comm messages: no comms are supported, and these have no reply.
            "comm_open" | "comm_msg" | "comm_close" => return None,
            other => {
                self.capture
                    .log(&format!("shell: unsupported message type {other}"));
                return None;
            }
        };
        Some(request.reply(content))
    }

    fn handle_control(&self, received: ZmqMessage) -> Option<Message> {
        match Message::decode(frames(received), &self.signer) {
            Ok(request) => {
                self.status(&request, "busy");
                let reply = self.handle_control_message(&request);
                self.status(&request, "idle");
                reply
            }
            Err(error) => {
                self.capture
                    .log(&format!("control: message dropped: {error}"));
                None
            }
        }
    }

    fn handle_control_message(&self, request: &Message) -> Option<Message> {
        match request.msg_type() {
            "interrupt_request" => {
                // The running call stops as at a Ctrl-C in the REPL; the session lives on.
                self.cancel.cancel();
                Some(request.reply(json!({ "status": "ok" })))
            }
            "shutdown_request" => {
                let restart = request.content["restart"].as_bool().unwrap_or(false);
                Some(request.reply(json!({ "status": "ok", "restart": restart })))
            }
            "kernel_info_request" => Some(request.reply(kernel_info())),
            other => {
                self.capture
                    .log(&format!("control: unsupported message type {other}"));
                None
            }
        }
    }
}

fn kernel_info() -> Value {
    json!({
        "status": "ok",
        "protocol_version": PROTOCOL_VERSION,
        "implementation": "llmlab",
        "implementation_version": env!("CARGO_PKG_VERSION"),
        "language_info": {
            "name": "rhai",
            "version": "1",
            "mimetype": "text/x-rhai",
            "file_extension": ".rhai",
            "pygments_lexer": "rust",
            "codemirror_mode": "rust",
        },
        "banner": format!("llmlab {} — Rhai with the llmlab plugins; help() lists components", env!("CARGO_PKG_VERSION")),
        "help_links": [],
    })
}
