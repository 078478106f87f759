"""A small Hugging Face Hub-compatible HTTP server for tests (standard library only).

It implements the endpoints that the real ``huggingface_hub``, ``datasets`` and ``diffusers`` clients call to create
repos, upload (regular and basic-LFS transfers), list and download files at a revision, and create branches and tags:

=========================================================  =====================================================
``GET  /api/whoami-v2``                                    the user a bearer token belongs to
``POST /api/repos/create``                                 create a model / dataset repo (409 if it exists)
``POST /api/validate-yaml``                                always valid
``GET  /api/{type}s/{repo}[/revision/{rev}]``              repo info with ``sha`` and ``siblings`` (``?blobs=1``)
``POST /api/{type}s/{repo}/preupload/{rev}``               upload mode per file: ``lfs`` for binary files
``POST /{type}s/{repo}.git/info/lfs/objects/batch``         LFS batch API (basic transfer, PUT to ``/__lfs__/``)
``PUT  /__lfs__/{sha256}``                                 stores an LFS object after checking its sha256
``POST /api/{type}s/{repo}/commit/{rev}``                  ndjson commit (file, lfsFile, deletedFile/Folder)
``GET  /api/{type}s/{repo}/tree/{rev}[/{path}]``           tree listing (``?recursive=true``)
``POST /api/{type}s/{repo}/paths-info/{rev}``              info on given paths (form-encoded)
``GET  /api/{type}s/{repo}/refs``                          branches and tags
``GET  /api/{type}s/{repo}/commits/{rev}``                 commit history
``POST /api/{type}s/{repo}/branch/{name}``                 create a branch (``startingPoint``)
``POST /api/{type}s/{repo}/tag/{rev}``                     create a tag
``HEAD/GET /[datasets/]{repo}/resolve/{rev}/{path}``       file content with ETag, X-Repo-Commit, Range support
=========================================================  =====================================================

Errors carry the ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) that the client
maps to its exception classes. Repos live in memory with a linear commit history per branch, so any branch, tag or
commit sha can be read. Writes need a bearer token from ``tokens``; reads of public repos do not.

Run standalone: ``python tests/hub/hub_server.py --port 8765 --token hf_test``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".parquet", ".arrow", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".npz", ".zip")
REGULAR_MAX_SIZE = 10 * 1024 * 1024
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.parquet filter=lfs diff=lfs merge=lfs -text\n"


def git_hash(data: bytes) -> str:
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass(frozen=True)
class FileEntry:
    content: bytes
    lfs_sha256: Optional[str] = None  # set when stored through LFS

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.lfs_sha256}\nsize {self.size}\n".encode()

    @property
    def oid(self) -> str:
        """git blob id (of the pointer file for LFS files, as on the Hub)."""
        return git_hash(self.pointer if self.lfs_sha256 else self.content)

    @property
    def etag(self) -> str:
        return self.lfs_sha256 or self.oid

    def tree_item(self, path: str) -> dict:
        item = {"type": "file", "oid": self.oid, "size": self.size, "path": path}
        if self.lfs_sha256:
            item["lfs"] = {"oid": self.lfs_sha256, "size": self.size, "pointerSize": len(self.pointer)}
        return item


@dataclass
class Commit:
    sha: str
    parent: Optional[str]
    files: Dict[str, FileEntry]
    title: str
    message: str
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: Dict[str, Commit] = field(default_factory=dict)
    branches: Dict[str, str] = field(default_factory=dict)
    tags: Dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Optional[Commit]:
        sha = self.branches.get(revision) or self.tags.get(revision)
        if sha is None and _SHA_RE.match(revision) and revision in self.commits:
            sha = revision
        return self.commits.get(sha) if sha else None

    def add_commit(self, branch: str, parent: Optional[str], files: Dict[str, FileEntry], title: str, message: str) -> Commit:
        seed = json.dumps([parent, sorted((p, f.oid) for p, f in files.items()), title, len(self.commits), time.time()])
        sha = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(sha, parent, files, title, message, _now())
        self.commits[sha] = commit
        self.branches[branch] = sha
        return commit


class HubState:
    """In-memory repos, LFS objects, users and a request log (method, path) for inspection."""

    def __init__(self, tokens: Optional[Dict[str, str]] = None):
        self.tokens = dict(tokens or {})
        self.repos: Dict[Tuple[str, str], Repo] = {}
        self.lfs: Dict[str, bytes] = {}
        self.lock = threading.RLock()
        self.requests: List[Tuple[str, str]] = []


class HubError(Exception):
    def __init__(self, status: int, message: str, code: Optional[str] = None, headers: Optional[dict] = None, body: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = {"error": message, **(body or {})}


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "TestHub/1.0"
    state: HubState  # set on the subclass made by make_server
    quiet = True

    # ------------------------------------------------------------------------------------------------ plumbing
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        if not self.quiet:
            super().log_message(format, *args)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json", headers: Optional[dict] = None, head: bool = False):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: Optional[dict] = None):
        self._send(status, json.dumps(payload).encode(), headers=headers)

    def _user(self) -> Optional[str]:
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return self.state.tokens.get(auth[7:].strip())
        return None

    def _require_user(self) -> str:
        auth = self.headers.get("Authorization", "")
        user = self._user()
        if user is None:
            message = "Invalid credentials in Authorization header" if auth else "Authorization header is required"
            raise HubError(401, message)
        return user

    def _dispatch(self, method: str):
        self.state.requests.append((method, self.path))
        body = self._body() if method in ("POST", "PUT", "DELETE") else b""
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        segments = url.path.strip("/").split("/")  # still percent-encoded: a quoted revision keeps its "%2F"
        try:
            with self.state.lock:
                self._route(method, segments, query, body)
        except HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send(err.status, json.dumps(err.body).encode(), headers=headers, head=method == "HEAD")
        except Exception as err:  # pragma: no cover - a server bug shows as a 500 with its message
            self._send(500, json.dumps({"error": f"{type(err).__name__}: {err}"}).encode(), head=method == "HEAD")

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # ------------------------------------------------------------------------------------------------ routing
    def _route(self, method: str, seg: List[str], query: dict, body: bytes):
        if seg[:2] == ["api", "whoami-v2"]:
            user = self._require_user()
            return self._json(200, {"type": "user", "name": user, "fullname": user, "orgs": [], "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
        if seg[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo(json.loads(body or b"{}"))
        if seg[:2] == ["api", "validate-yaml"]:
            return self._json(200, {"errors": [], "warnings": []})
        if seg[:1] == ["__lfs__"] and method == "PUT":
            return self._lfs_put(seg[1], body)
        if seg[0] == "api" and len(seg) >= 4 and seg[1] in REPO_TYPES:
            repo_type = REPO_TYPES[seg[1]]
            repo_id = f"{unquote(seg[2])}/{unquote(seg[3])}"
            rest = seg[4:]
            return self._api_repo(method, repo_type, repo_id, rest, query, body)
        # LFS batch: /{prefix}{ns}/{name}.git/info/lfs/objects/batch
        if len(seg) >= 3 and seg[-4:] == ["info", "lfs", "objects", "batch"]:
            prefix = seg[0] if seg[0] in REPO_TYPES else None
            names = seg[1:3] if prefix else seg[0:2]
            repo_type = REPO_TYPES[prefix] if prefix else "model"
            return self._lfs_batch(repo_type, f"{names[0]}/{names[1].removesuffix('.git')}", json.loads(body))
        # resolve: /[datasets/]{ns}/{name}/resolve/{rev}/{path}
        prefix = seg[0] if seg and seg[0] in REPO_TYPES else None
        rest = seg[1:] if prefix else seg
        if len(rest) >= 5 and rest[2] == "resolve" and method in ("GET", "HEAD"):
            repo_type = REPO_TYPES[prefix] if prefix else "model"
            repo_id = f"{unquote(rest[0])}/{unquote(rest[1])}"
            return self._resolve(method, repo_type, repo_id, unquote(rest[3]), unquote("/".join(rest[4:])))
        raise HubError(404, f"no route for {method} /{'/'.join(seg)}")

    # ------------------------------------------------------------------------------------------------ helpers
    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and self._user() != repo_id.split("/")[0]):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _check_write(self, repo_id: str) -> str:
        user = self._require_user()
        if repo_id.split("/")[0] != user:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return user

    def _url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _repo_url(self, repo: Repo) -> str:
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return f"{self._url()}/{prefix}{repo.repo_id}"

    # ------------------------------------------------------------------------------------------------ endpoints
    def _create_repo(self, payload: dict):
        user = self._require_user()
        namespace = payload.get("organization") or user
        if namespace != user:
            raise HubError(403, f"You don't have the rights to create a repo under {namespace}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{payload['name']}"
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        repo = Repo(repo_type, repo_id, private, _now())
        if (repo_type, repo_id) in self.state.repos:  # the Hub answers 409 with the url of the existing repo
            raise HubError(409, "You already created this repo", body={"url": self._repo_url(repo)})
        repo.add_commit("main", None, {".gitattributes": FileEntry(GITATTRIBUTES)}, "initial commit", "")
        self.state.repos[(repo_type, repo_id)] = repo
        return self._json(200, {"url": self._repo_url(repo), "name": repo_id, "id": repo_id})

    def _api_repo(self, method: str, repo_type: str, repo_id: str, rest: List[str], query: dict, body: bytes):
        repo = self._repo(repo_type, repo_id)
        action = rest[0] if rest else ""
        if method == "GET" and action in ("", "revision"):
            revision = unquote(rest[1]) if action == "revision" and len(rest) > 1 else "main"
            return self._info(repo, self._commit(repo, revision), blobs=bool(query.get("blobs")))
        if method == "POST" and action == "preupload":
            self._check_write(repo_id)
            commit = self._commit(repo, unquote(rest[1]))
            files = []
            for item in json.loads(body)["files"]:
                sample = base64.b64decode(item.get("sample", ""))
                lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] > REGULAR_MAX_SIZE or b"\0" in sample
                existing = commit.files.get(item["path"])
                oid = None
                if existing is not None:
                    oid = existing.lfs_sha256 if existing.lfs_sha256 else existing.oid
                files.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
            return self._json(200, {"files": files, "commitOid": commit.sha})
        if method == "POST" and action == "commit":
            self._check_write(repo_id)
            if query.get("create_pr"):
                raise HubError(400, "pull requests are not supported by the test server")
            return self._commit_ndjson(repo, unquote(rest[1]), body)
        if method == "GET" and action == "tree":
            commit = self._commit(repo, unquote(rest[1]))
            path = unquote("/".join(rest[2:])).strip("/")
            recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
            return self._json(200, self._tree(commit, path, recursive))
        if method == "POST" and action == "paths-info":
            commit = self._commit(repo, unquote(rest[1]))
            ctype = self.headers.get("Content-Type", "")
            if "json" in ctype:
                paths = json.loads(body).get("paths", [])
            else:
                paths = parse_qs(body.decode()).get("paths", [])
            return self._json(200, self._paths_info(commit, paths))
        if method == "GET" and action == "refs":
            return self._json(
                200,
                {
                    "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in repo.branches.items()],
                    "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in repo.tags.items()],
                    "converts": [],
                },
            )
        if method == "GET" and action == "commits":
            commit = self._commit(repo, unquote(rest[1]) if len(rest) > 1 else "main")
            history = []
            while commit is not None:
                history.append({"id": commit.sha, "title": commit.title, "message": commit.message, "date": commit.date, "authors": [{"user": repo_id.split("/")[0]}]})
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return self._json(200, history)
        if action == "branch" and method in ("POST", "DELETE"):
            self._check_write(repo_id)
            name = unquote("/".join(rest[1:]))
            if method == "DELETE":
                if name not in repo.branches:
                    raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
                del repo.branches[name]
                return self._json(200, {})
            if name in repo.branches or name in repo.tags:
                raise HubError(409, f"Reference {name} already exists")
            start = json.loads(body or b"{}").get("startingPoint") or "main"
            repo.branches[name] = self._commit(repo, start).sha
            return self._json(200, {})
        if action == "tag" and method == "POST":
            self._check_write(repo_id)
            commit = self._commit(repo, unquote(rest[1]))
            tag = json.loads(body)["tag"]
            if tag in repo.tags or tag in repo.branches:
                raise HubError(409, f"Tag {tag} already exists")
            repo.tags[tag] = commit.sha
            return self._json(200, {})
        raise HubError(404, f"no route for {method} {action!r} on {repo_id}")

    def _info(self, repo: Repo, commit: Commit, blobs: bool):
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if blobs:
                sibling.update({"size": entry.size, "blobId": entry.oid})
                if entry.lfs_sha256:
                    sibling["lfs"] = {"size": entry.size, "sha256": entry.lfs_sha256, "pointerSize": len(entry.pointer)}
            siblings.append(sibling)
        info = {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        return self._json(200, info)

    @staticmethod
    def _dirs(paths) -> Dict[str, str]:
        dirs = {}
        for path in paths:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                dirs[d] = hashlib.sha1(("tree:" + d + ":" + ",".join(sorted(p for p in paths if p.startswith(d + "/")))).encode()).hexdigest()
        return dirs

    def _tree(self, commit: Commit, path: str, recursive: bool) -> List[dict]:
        files = commit.files
        dirs = self._dirs(files)
        if path and path not in dirs:
            if path in files:
                return [files[path].tree_item(path)]
            raise HubError(404, f"{path} does not exist", "EntryNotFound")
        prefix = path + "/" if path else ""

        def wanted(p: str) -> bool:
            return p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])

        items = [{"type": "directory", "oid": oid, "size": 0, "path": d} for d, oid in sorted(dirs.items()) if wanted(d)]
        items += [entry.tree_item(p) for p, entry in sorted(files.items()) if wanted(p)]
        return items

    def _paths_info(self, commit: Commit, paths: List[str]) -> List[dict]:
        dirs = self._dirs(commit.files)
        out = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                out.append(commit.files[path].tree_item(path))
            elif path in dirs:
                out.append({"type": "directory", "oid": dirs[path], "size": 0, "path": path})
        return out

    def _commit_ndjson(self, repo: Repo, revision: str, body: bytes):
        if revision not in repo.branches:
            if repo.resolve(revision) is not None:
                raise HubError(400, f"Cannot commit to {revision}: not a branch")
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        head = repo.commits[repo.branches[revision]]
        files = dict(head.files)
        header = {}
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                content = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else value["content"].encode()
                files[value["path"]] = FileEntry(content)
            elif key == "lfsFile":
                content = self.state.lfs.get(value["oid"])
                if content is None:
                    raise HubError(400, f"LFS object {value['oid']} for {value['path']} was not uploaded")
                files[value["path"]] = FileEntry(content, value["oid"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                for p in [p for p in files if p.startswith(folder)]:
                    del files[p]
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        parent = header.get("parentCommit")
        if parent and parent != head.sha:
            raise HubError(412, f"parent commit {parent} is not the head of {revision} ({head.sha})")
        commit = repo.add_commit(revision, head.sha, files, header.get("summary", ""), header.get("description", ""))
        return self._json(200, {"success": True, "commitOid": commit.sha, "commitUrl": f"{self._repo_url(repo)}/commit/{commit.sha}", "pullRequestUrl": None})

    def _lfs_batch(self, repo_type: str, repo_id: str, payload: dict):
        self._repo(repo_type, repo_id)
        self._check_write(repo_id)
        objects = []
        for obj in payload.get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.state.lfs:
                entry["actions"] = {"upload": {"href": f"{self._url()}/__lfs__/{obj['oid']}", "header": {}}}
            objects.append(entry)
        return self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(), content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, oid: str, body: bytes):
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"sha256 of the uploaded content does not match {oid}")
        self.state.lfs[oid] = body
        return self._send(200, b"", content_type="text/plain")

    def _resolve(self, method: str, repo_type: str, repo_id: str, revision: str, path: str):
        repo = self._repo(repo_type, repo_id)
        commit = self._commit(repo, revision)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        headers = {
            "ETag": f'"{entry.etag}"',
            "X-Repo-Commit": commit.sha,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.split('/')[-1])}",
        }
        if entry.lfs_sha256:
            headers["X-Linked-Etag"] = f'"{entry.lfs_sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        content = entry.content
        status = 200
        match = re.match(r"bytes=(\d*)-(\d*)$", self.headers.get("Range", "").strip())
        if match and method == "GET":
            start_s, end_s = match.groups()
            if start_s == "":
                start, end = max(entry.size - int(end_s), 0), entry.size - 1
            else:
                start, end = int(start_s), min(int(end_s) if end_s else entry.size - 1, entry.size - 1)
            if start >= entry.size:
                raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{entry.size}"})
            content = content[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
            status = 206
        return self._send(status, content, content_type="application/octet-stream", headers=headers, head=method == "HEAD")


class HubServer:
    """``with HubServer(tokens={"hf_x": "alice"}) as hub: hub.url``: a server thread on 127.0.0.1."""

    def __init__(self, tokens: Optional[Dict[str, str]] = None, port: int = 0, quiet: bool = True):
        self.state = HubState(tokens)
        handler = type("BoundHubHandler", (HubHandler,), {"state": self.state, "quiet": quiet})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="test-hub", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default="hf_test_token")
    parser.add_argument("--user", default="tester")
    args = parser.parse_args(argv)
    server = HubServer({args.token: args.user}, port=args.port, quiet=False)
    print(f"serving on {server.url}", flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
