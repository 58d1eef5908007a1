#!/usr/bin/env python3
"""A stand-in for telegram-bot-api --local, for checking the images (scripts/docker-check.sh).

Serves the Bot API methods the bot calls on 127.0.0.1:8081. At start it puts the demo video and
subtitles for it into /var/lib/telegram-bot-api (the volume the bot shares, as with the real
server's --local mode) and queues one update: the subtitles sent as a reply to the video. Every
call is printed as one JSON line ("call": method, "text": ...), so the check reads the log.
"""
import json
import os
import shutil
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

ROOT = "/var/lib/telegram-bot-api/check"
USER = 100
lock = threading.Lock()
next_id = [1000]


def setup():
    os.makedirs(ROOT, exist_ok=True)
    shutil.copy("/opt/check/demo.mp4", f"{ROOT}/demo.mp4")
    lines = [l.strip() for l in open("/opt/check/script.ru.txt", encoding="utf-8") if l.strip()]
    with open(f"{ROOT}/demo.srt", "w", encoding="utf-8") as f:
        for i, line in enumerate(lines):
            a, b = min(i * 5, 59), min(i * 5 + 5, 59)
            f.write(f"{i + 1}\n00:00:{a:02},000 --> 00:00:{b:02},000\n{line}\n\n")
    os.chmod(ROOT, 0o777)


FILES = {
    "vid": (f"{ROOT}/demo.mp4", lambda: os.path.getsize(f"{ROOT}/demo.mp4")),
    "subs": (f"{ROOT}/demo.srt", lambda: os.path.getsize(f"{ROOT}/demo.srt")),
}
chat = {"id": USER, "type": "private", "first_name": "u"}
user = {"id": USER, "is_bot": False, "first_name": "user"}
video = {"message_id": 10, "date": 0, "chat": chat, "from": user, "caption": "2",
         "video": {"file_id": "vid", "file_unique_id": "uvid", "width": 1280, "height": 720,
                   "duration": 65, "file_size": 1300000, "mime_type": "video/mp4"}}
subs = {"message_id": 11, "date": 0, "chat": chat, "from": user, "reply_to_message": video,
        "document": {"file_id": "subs", "file_unique_id": "usubs", "file_name": "a.srt", "file_size": 900}}
updates = [{"update_id": 1, "message": subs}]


def log(**kw):
    print(json.dumps(kw, ensure_ascii=False), flush=True)


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def fields(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
        kind = self.headers.get("Content-Type", "")
        if kind.startswith("application/json"):
            return {k: v if isinstance(v, str) else json.dumps(v) for k, v in json.loads(body or b"{}").items()}
        if kind.startswith("application/x-www-form-urlencoded"):
            return {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if kind.startswith("multipart/form-data"):
            # Only the text fields matter here; uploaded files are counted by size.
            out, boundary = {"_bytes": str(len(body))}, kind.split("boundary=")[-1].encode()
            for part in body.split(b"--" + boundary):
                head, _, value = part.partition(b"\r\n\r\n")
                if b'name="' in head and b"filename=" not in head:
                    name = head.split(b'name="')[1].split(b'"')[0].decode()
                    out[name] = value.rstrip(b"\r\n").decode("utf-8", "replace")
            return out
        return {}

    def answer(self, result, ok=True):
        data = json.dumps({"ok": ok, "result": result}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = lambda self: self.handle_call()

    def handle_call(self):
        # Method names are case-insensitive (teloxide sends "GetMe", others "getme").
        method = self.path.rsplit("/", 1)[-1].split("?")[0].lower()
        f = self.fields()
        if method == "getupdates":
            offset = int(f.get("offset", 0) or 0)
            with lock:
                updates[:] = [u for u in updates if u["update_id"] >= offset]
                ups = list(updates)
            if not ups:
                time.sleep(0.5)
            return self.answer(ups)
        log(call=method, text=f.get("text") or f.get("caption") or "", chat_id=f.get("chat_id"),
            width=f.get("width"), height=f.get("height"), bytes=f.get("_bytes"))
        if method == "getme":
            return self.answer({"id": 42, "is_bot": True, "first_name": "viralclip", "username": "vc_bot",
                                "can_join_groups": True, "can_read_all_group_messages": False,
                                "supports_inline_queries": False, "has_main_web_app": False})
        if method == "getwebhookinfo":
            return self.answer({"url": "", "has_custom_certificate": False, "pending_update_count": 0})
        if method == "getfile":
            path, size = FILES[f["file_id"]]
            return self.answer({"file_id": f["file_id"], "file_unique_id": "u" + f["file_id"],
                                "file_size": size(), "file_path": path})
        if method in ("sendmessage", "sendvideo", "sendphoto", "senddocument", "editmessagetext"):
            with lock:
                next_id[0] += 1
                mid = int(f.get("message_id") or next_id[0])
            return self.answer({"message_id": mid, "date": 0, "chat": chat, "text": f.get("text", "")})
        return self.answer(True)


if __name__ == "__main__":
    setup()
    host, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8081").split(":")
    log(call="ready", text=f"listening on {host}:{port}")
    ThreadingHTTPServer((host, int(port)), Api).serve_forever()
