"""Asks a running blipd through the official `ollama` and `openai` Python
clients, as Home Assistant, Frigate and scripts do, and prints one JSON
object with every answer and error it got (tests/serve/http_api.rs checks
them against the transformers goldens and `blipd ask --image`).

    clients.py --base http://127.0.0.1:PORT --key KEY --image FILE --camera NAME --prompt TEXT
"""

import argparse
import base64
import json
import sys

import ollama
import openai


def raw(client, method, path, **kw):
    """A request the typed API would refuse to send (wrong types, bad
    base64): through the client's own HTTP session and error handling."""
    return client._request_raw(method, path, **kw)


def ollama_error(fn):
    try:
        fn()
    except ollama.ResponseError as e:
        return {"status": e.status_code, "error": e.error}
    return {"status": 200, "error": None}


def openai_error(fn):
    try:
        fn()
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        err = body.get("error", body) if isinstance(body, dict) else {}
        return {"status": e.status_code, "type": type(e).__name__, "code": err.get("code"), "message": err.get("message")}
    return {"status": 200}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--camera", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--answers-only", action="store_true",
                    help="only the answers (by picture and by camera, streamed and not)")
    a = ap.parse_args()
    auth = {"Authorization": f"Bearer {a.key}"}
    picture = open(a.image, "rb").read()
    data_url = "data:image/png;base64," + base64.b64encode(picture).decode()
    from importlib.metadata import version
    out = {"versions": {"ollama": version("ollama"), "openai": version("openai")}}

    o = ollama.Client(host=a.base, headers=auth, timeout=120)
    c = openai.OpenAI(base_url=a.base + "/v1", api_key=a.key, max_retries=0, timeout=120)
    content = [{"type": "text", "text": a.prompt}, {"type": "image_url", "image_url": {"url": data_url}}]
    if a.answers_only:
        chunks = list(o.generate(model="blipd", prompt=a.prompt, images=[picture], stream=True))
        out["ollama_image"] = o.generate(model="blipd", prompt=a.prompt, images=[a.image]).response
        out["ollama_image_stream"] = "".join(ch.response for ch in chunks)
        out["ollama_camera"] = o.chat(model=f"blipd:{a.camera}", messages=[{"role": "user", "content": a.prompt}]).message.content
        r = c.chat.completions.create(model="blipd", messages=[{"role": "user", "content": content}])
        out["openai_image"] = r.choices[0].message.content
        # The `camera` extension field, as a client sends fields its library lacks.
        r = c.chat.completions.create(model="blipd", extra_body={"camera": a.camera},
                                      messages=[{"role": "user", "content": a.prompt}])
        out["openai_camera"] = r.choices[0].message.content
        # An http:// image_url, served here by a real HTTP server (the daemon
        # fetches it only where http.allow_image_urls is on).
        import functools
        import http.server
        import os
        import threading
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=os.path.dirname(os.path.abspath(a.image)))
        handler.log_message = lambda *args: None
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{srv.server_address[1]}/{os.path.basename(a.image)}"
        r = c.chat.completions.create(model="blipd", messages=[{"role": "user", "content": [
            {"type": "text", "text": a.prompt}, {"type": "image_url", "image_url": {"url": url}}]}])
        out["openai_image_url"] = r.choices[0].message.content
        srv.shutdown()
        out["transcript"] = [ch.model_dump(exclude_none=True) for ch in chunks]
        json.dump(out, sys.stdout)
        return
    out["ollama_version"] = raw(o, "GET", "/api/version").json()
    out["tags"] = [m.model for m in o.list().models]
    show = o.show("blipd")
    out["show_capabilities"] = list(show.capabilities or [])

    r = o.generate(model="blipd", prompt=a.prompt, images=[a.image], stream=False)
    out["generate"] = {"text": r.response, "done": r.done, "done_reason": r.done_reason,
                       "eval_count": r.eval_count, "prompt_eval_count": r.prompt_eval_count,
                       "total_duration": r.total_duration, "eval_duration": r.eval_duration}
    chunks = list(o.generate(model="blipd", prompt=a.prompt, images=[picture], stream=True))
    out["generate_stream"] = {
        "text": "".join(c.response for c in chunks),
        "chunks": len(chunks),
        "last_done": chunks[-1].done,
        "done_before_last": any(c.done for c in chunks[:-1]),
        "eval_count": chunks[-1].eval_count,
    }
    out["transcript"] = [c.model_dump(exclude_none=True) for c in chunks]
    msgs = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": a.prompt, "images": [a.image]}]
    r = o.chat(model="blipd", messages=msgs, stream=False)
    out["chat"] = {"text": r.message.content, "role": r.message.role, "done_reason": r.done_reason}
    chunks = list(o.chat(model="blipd", messages=msgs, stream=True))
    out["chat_stream"] = {"text": "".join(c.message.content or "" for c in chunks), "last_done": chunks[-1].done}
    r = o.generate(model=f"blipd:{a.camera}", prompt=a.prompt, stream=False)
    out["generate_camera"] = r.response
    r = o.generate(model="blipd", prompt=a.prompt, images=[a.image], stream=False, format="json",
                   options={"num_predict": 48})
    out["generate_json"] = r.response

    out["ollama_errors"] = {
        "no_image": ollama_error(lambda: o.generate(model="blipd", prompt=a.prompt)),
        "unknown_model": ollama_error(lambda: o.generate(model="llava:7b", prompt=a.prompt, images=[a.image])),
        "unknown_camera": ollama_error(lambda: o.generate(model="blipd:attic", prompt=a.prompt)),
        "bad_base64": ollama_error(lambda: raw(o, "POST", "/api/generate", json={
            "model": "blipd", "prompt": a.prompt, "images": ["not base64!"], "stream": False})),
        "not_a_picture": ollama_error(lambda: raw(o, "POST", "/api/generate", json={
            "model": "blipd", "prompt": a.prompt, "images": [base64.b64encode(b"hello").decode()], "stream": False})),
        "wrong_types": ollama_error(lambda: raw(o, "POST", "/api/generate", json={
            "model": "blipd", "prompt": 12, "images": "x"})),
        "empty_prompt": ollama_error(lambda: o.chat(model="blipd", messages=[{"role": "user", "content": " ", "images": [a.image]}])),
        "no_key": ollama_error(lambda: ollama.Client(host=a.base).list()),
    }

    out["models"] = [m.id for m in c.models.list().data]
    r = c.chat.completions.create(model="blipd", messages=[{"role": "user", "content": content}])
    out["openai"] = {"text": r.choices[0].message.content, "finish_reason": r.choices[0].finish_reason,
                     "completion_tokens": r.usage.completion_tokens, "prompt_tokens": r.usage.prompt_tokens,
                     "id": r.id, "object": r.object}
    stream = c.chat.completions.create(model="blipd", messages=[{"role": "user", "content": content}],
                                       stream=True, stream_options={"include_usage": True})
    parts, finish, usage = [], None, None
    for ch in stream:
        if ch.choices:
            parts.append(ch.choices[0].delta.content or "")
            finish = ch.choices[0].finish_reason or finish
        if ch.usage:
            usage = ch.usage.completion_tokens
    out["openai_stream"] = {"text": "".join(parts), "finish_reason": finish, "usage_completion_tokens": usage}
    r = c.chat.completions.create(model=f"blipd:{a.camera}", messages=[{"role": "user", "content": a.prompt}])
    out["openai_camera"] = r.choices[0].message.content
    r = c.chat.completions.create(model="blipd", messages=[{"role": "user", "content": content}], max_tokens=2)
    out["openai_short"] = {"finish_reason": r.choices[0].finish_reason, "tokens": r.usage.completion_tokens}

    def bad_image(url):
        return lambda: c.chat.completions.create(model="blipd", messages=[{"role": "user", "content": [
            {"type": "text", "text": a.prompt}, {"type": "image_url", "image_url": {"url": url}}]}])

    out["openai_errors"] = {
        "no_image": openai_error(lambda: c.chat.completions.create(model="blipd", messages=[{"role": "user", "content": a.prompt}])),
        "unknown_model": openai_error(lambda: c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": content}])),
        "bad_base64": openai_error(bad_image("data:image/png;base64,@@@@")),
        "url_not_allowed": openai_error(bad_image("http://127.0.0.1:9/x.jpg")),
        "two_answers": openai_error(lambda: c.chat.completions.create(model="blipd", n=2, messages=[{"role": "user", "content": content}])),
        "wrong_key": openai_error(lambda: openai.OpenAI(base_url=a.base + "/v1", api_key="wrong", max_retries=0).models.list()),
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
