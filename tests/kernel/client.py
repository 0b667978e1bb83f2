"""Drives the llmlab Jupyter kernel with Jupyter's own client library, as a notebook would.

Run by tests/e2e/kernel.rs with the kernelspec installed under $JUPYTER_PATH and the example
"hello" plugin (which panics on request) on the kernel's plugin path. Each check prints `ok: ...`;
any failure raises with what the kernel sent.
"""
import base64
import sys
import time

from jupyter_client.manager import start_new_kernel

TINY = """let data = corpus("stories", #{ bytes: 30000, seed: 1 });
let tok = tokenizer("bpe", #{ vocab_size: 300 });
tok.train(data);
let ds = tok.encode(data, #{ val_fraction: 0.1 });
let m = model("gpt", #{ vocab_size: tok.vocab_size(), n_layer: 1, n_head: 2, d_model: 32, ctx: 32 });
"""


def run_cell(kc, code, timeout=120, on_output=None):
    """Executes `code`; returns (reply content, [(msg_type, content)] of its IOPub output)."""
    msg_id = kc.execute(code)
    outputs = []
    deadline = time.time() + timeout
    while True:
        remaining = deadline - time.time()
        if remaining <= 0:
            raise AssertionError(f"no idle status for {code!r}; got {outputs}")
        msg = kc.get_iopub_msg(timeout=remaining)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "status":
            if msg["content"]["execution_state"] == "idle":
                break
            continue
        outputs.append((kind, msg["content"]))
        if on_output:
            on_output(kind, msg["content"])
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"], outputs


def shell_reply(kc, msg_id, timeout=30):
    """The reply's content to the request `msg_id` (for client calls without `reply=True`)."""
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]


def stream_text(outputs, name="stdout"):
    return "".join(c["text"] for k, c in outputs if k == "stream" and c["name"] == name)


def result_data(outputs):
    results = [c["data"] for k, c in outputs if k == "execute_result"]
    assert len(results) == 1, f"one execute_result expected: {outputs}"
    return results[0]


def check(condition, what, detail):
    if not condition:
        raise AssertionError(f"{what}: {detail}")
    print(f"ok: {what}", flush=True)


def main():
    km, kc = start_new_kernel(kernel_name="llmlab", startup_timeout=120)
    try:
        info = kc.kernel_info(reply=True, timeout=30)["content"]
        check(info["language_info"]["name"] == "rhai", "kernel_info names the language", info)

        reply, _ = run_cell(kc, "let x = 20;")
        check(reply["status"] == "ok", "a cell defines a variable", reply)
        reply, out = run_cell(kc, "x * 2 + 2")
        check(result_data(out)["text/plain"] == "42", "a later cell uses it", out)
        check(reply["execution_count"] == 2, "cells are counted", reply)

        reply, out = run_cell(kc, 'print("hello from rhai"); print("second line");')
        check(
            stream_text(out) == "hello from rhai\nsecond line\n",
            "print streams to stdout",
            out,
        )

        reply, out = run_cell(
            kc,
            TINY
            + 'let r = trainer("lm", #{ steps: 8, batch_size: 4, eval_every: 4, eval_batches: 2 }).fit(m, ds);\nr.loss',
            timeout=300,
        )
        check(reply["status"] == "ok", "a cell trains a few steps", reply)
        text = stream_text(out)
        check("entropy floor" in text and "runs/" in text, "fit's summary streams", out)
        check(float(result_data(out)["text/plain"]) > 0, "the loss is the value", out)

        reply, out = run_cell(kc, "plot()")
        data = result_data(out)
        png = base64.b64decode(data.get("image/png", ""))
        check(png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, "plot() shows a PNG", data.keys())

        reply, out = run_cell(kc, "tensor([[1, 2], [3, 4]])")
        html = result_data(out).get("text/html", "")
        check("<table>" in html and "4.0000" in html, "tensors render as tables", html)

        reply = kc.complete("tok.voc", 7, reply=True, timeout=30)["content"]
        check(
            "vocab_size" in reply["matches"] and reply["cursor_start"] == 4,
            "tok.voc completes to vocab_size",
            reply,
        )
        reply = kc.inspect("gpt", 3, reply=True, timeout=30)["content"]
        check(
            reply["found"] and "n_layer" in reply["data"]["text/plain"],
            "inspecting a component shows its config keys",
            reply,
        )
        reply = shell_reply(kc, kc.is_complete("let y = #{"))
        check(reply["status"] == "incomplete", "an open map is incomplete", reply)

        # An interrupt stops a long training call; the kernel and its variables live on.
        started = {}

        def interrupt_once(kind, content):
            if kind == "stream" and "training now" in content.get("text", "") and not started:
                started["at"] = time.time()
                time.sleep(1.0)
                km.interrupt_kernel()

        begin = time.time()
        reply, out = run_cell(
            kc,
            'print("training now");\ntrainer("lm", #{ steps: 1000000, batch_size: 4, eval_every: 0 }).fit(m, ds);',
            timeout=120,
            on_output=interrupt_once,
        )
        check("at" in started, "the long cell started", out)
        check(
            reply["status"] == "error" and "cancelled" in reply["evalue"],
            "an interrupt stops the running call",
            reply,
        )
        check(time.time() - started["at"] < 30, "promptly", time.time() - begin)
        reply, out = run_cell(kc, "x + 1")
        check(result_data(out)["text/plain"] == "21", "the kernel lives on with its variables", out)

        reply, out = run_cell(
            kc, 'let t = tokenizer("hello", #{ panic_on: "boom" });\nt.encode("hello boom")'
        )
        errors = [c for k, c in out if k == "error"]
        check(
            reply["status"] == "error"
            and "panic in hello" in reply["evalue"]
            and len(errors) == 1,
            "a plugin panic is a cell error",
            (reply, out),
        )
        reply, out = run_cell(kc, 't.encode("world hello")')
        check(result_data(out)["text/plain"] == "[2, 1]", "and the session survives it", out)

        # "Run All": cells sent at once; after the failing one the queued rest are aborted.
        ids = [kc.execute(code) for code in ["let z = 1;", "undefined_fn()", "z = 2;", "z = 3;"]]
        replies = {}
        while len(replies) < len(ids):
            msg = kc.get_shell_msg(timeout=60)
            replies[msg["parent_header"]["msg_id"]] = msg["content"]["status"]
        statuses = [replies[i] for i in ids]
        check(statuses == ["ok", "error", "aborted", "aborted"], "cells queued after an error are aborted", statuses)
        reply, out = run_cell(kc, "z")
        check(result_data(out)["text/plain"] == "1", "and did not run", out)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    check(not km.is_alive(), "shutdown ends the kernel", "still alive")
    return 0


if __name__ == "__main__":
    sys.exit(main())
