"""A tiny in-memory Hugging Face Hub for tests: the endpoints the real huggingface_hub client calls for
create_repo + create_commit (push) and snapshot_download (pull), regular (non-LFS) files only."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file, which the Hub sends as the ETag of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    """A model repo: commits as {sha: {path: bytes}}, `main` pointing at the newest."""

    def __init__(self) -> None:
        self.commits: dict[str, dict[str, bytes]] = {}
        self.log: list[tuple[str, str, list[str]]] = []  # (sha, summary, paths written), oldest first
        self.main = ""

    def commit(self, summary: str, changes: dict[str, bytes]) -> str:
        files = {**self.commits.get(self.main, {}), **changes}
        sha = hashlib.sha1(f"{self.main}{summary}{len(self.log)}".encode() + b"".join(changes.values())).hexdigest()
        self.commits[sha], self.main = files, sha
        self.log.append((sha, summary, sorted(changes)))
        return sha


class HubServer:
    """Threaded HTTP server on 127.0.0.1 (free port); `url` is the endpoint, `requests` every (method, path) seen,
    `auth` every Authorization header seen. With `token` set, requests carrying another token get 401."""

    def __init__(self, token: str | None = None) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.auth: list[str] = []
        self.token = token
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> Repo:
        """A repo with one commit holding `files` (for repos dlcv did not push)."""
        repo = self.repos[repo_id] = Repo()
        repo.commit("initial commit", files)
        return repo


def _handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def reply(self, status: int, body: bytes | dict | list = b"", headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
            self.send_response(status)
            for key, value in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                               **(headers or {})}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
            headers = {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})}  # hf_raise_for_status
            self.reply(status, {"error": message}, headers)

        def body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def route(self) -> None:
            path = urlsplit(self.path).path
            hub.requests.append((self.command, path))
            if self.headers.get("Authorization"):
                hub.auth.append(self.headers["Authorization"])
            if hub.token and self.headers.get("Authorization") not in (None, f"Bearer {hub.token}"):
                return self.error(401, "Unauthorized", "Invalid credentials in Authorization header")
            parts = [unquote(p) for p in path.strip("/").split("/")]
            if self.command == "POST" and parts == ["api", "repos", "create"]:
                return self.create(json.loads(self.body()))
            if self.command == "POST" and parts == ["api", "validate-yaml"]:
                return self.reply(200, {"errors": [], "warnings": []})
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                return self.api(f"{parts[2]}/{parts[3]}", parts[4:])
            if len(parts) >= 5 and parts[2] == "resolve" and self.command in ("GET", "HEAD"):
                return self.resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            self.error(404, "NotFound", f"no route for {self.command} {path}")

        do_GET = do_HEAD = do_POST = route

        def create(self, payload: dict) -> None:
            repo_id = f"{payload['organization']}/{payload['name']}"
            if repo_id in hub.repos:
                return self.error(409, "RepoExists", "You already created this model repo")
            hub.add_repo(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
            self.reply(200, {"url": f"{hub.url}/{repo_id}"})

        def commit_of(self, repo_id: str, rev: str) -> tuple[Repo | None, str | None]:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self.error(404, "RepoNotFound", "Repository not found")
                return None, None
            sha = repo.main if rev == "main" else rev
            if sha not in repo.commits:
                self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return None, None
            return repo, sha

        def api(self, repo_id: str, rest: list[str]) -> None:
            rev = rest[1] if len(rest) >= 2 else "main"
            repo, sha = self.commit_of(repo_id, rev)
            if repo is None:
                return
            files = repo.commits[sha]
            if self.command == "GET" and rest in ([], ["revision", rev]):  # model_info / repo_info
                return self.reply(200, {"id": repo_id, "sha": sha, "private": False,
                                        "siblings": [{"rfilename": p} for p in sorted(files)]})
            if self.command == "GET" and rest[:1] == ["tree"]:  # list_repo_tree (one page, no Link header)
                return self.reply(200, [{"type": "file", "path": p, "size": len(b), "oid": git_blob_sha1(b)}
                                        for p, b in sorted(files.items())])
            if self.command == "POST" and rest[:1] == ["preupload"]:  # every file "regular": no LFS, no Xet
                return self.reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                  for f in json.loads(self.body())["files"]]})
            if self.command == "POST" and rest[:1] == ["commit"]:  # NDJSON: a header line, then one line per file
                lines = [json.loads(line) for line in self.body().splitlines() if line.strip()]
                summary = next(item["value"]["summary"] for item in lines if item["key"] == "header")
                changes = {item["value"]["path"]: base64.b64decode(item["value"]["content"])
                           for item in lines if item["key"] == "file"}
                new = repo.commit(summary, changes)
                return self.reply(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{new}", "commitOid": new,
                                        "pullRequestUrl": None})
            self.error(404, "NotFound", f"no route for {self.command} {self.path}")

        def resolve(self, repo_id: str, rev: str, path: str) -> None:
            repo, sha = self.commit_of(repo_id, rev)
            if repo is None:
                return
            data = repo.commits[sha].get(path)
            if data is None:
                return self.error(404, "EntryNotFound", f"{path} does not exist on {rev}", {"X-Repo-Commit": sha})
            self.reply(200, data, {"Content-Type": "application/octet-stream", "ETag": f'"{git_blob_sha1(data)}"',
                                   "X-Repo-Commit": sha})

    return Handler
