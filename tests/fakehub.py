"""A Hugging Face hub on loopback, serving model repositories from local folders, so that the
download paths (`hf download`, `python -m engine.fetch_model`) run for real against the same
HTTP protocol `huggingface_hub` speaks to huggingface.co (HF_ENDPOINT points clients at it).

Served: `HEAD`/`GET /{repo}/resolve/{revision}/{file}` (with the commit, ETag and size headers
the client reads), `GET /api/models/{repo}[/revision/{revision}]` (the repository and its file
names) and `GET /api/models/{repo}/tree/{revision}` (the files with their sizes). Anything
else is a 404, and every request is recorded in `requests`.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import typing as tp

from aiohttp import web


class FakeHub:
    def __init__(self, repos: tp.Mapping[str, str]):
        """`repos`: repository id (e.g. "facebook/musicgen-small") → the folder of its files."""
        self.repos = dict(repos)
        self.requests: tp.List[str] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._runner: tp.Optional[web.AppRunner] = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    def _commit(self, repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def _entry(self, repo: str, filename: str) -> dict:
        """A file as the tree listing describes it."""
        with open(os.path.join(self.repos[repo], filename), "rb") as f:
            data = f.read()
        return {"type": "file", "path": filename, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}

    def _split(self, path: str, marker: str) -> tp.Optional[tp.Tuple[str, str]]:
        """(repo, the rest) for a path "<repo>/<marker>/<rest>" of a served repo."""
        for repo in self.repos:
            prefix = f"{repo}/{marker}/"
            if path.startswith(prefix):
                return repo, path[len(prefix):]
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        path = request.path.lstrip("/")
        if path.startswith("api/models/"):
            rest = path[len("api/models/"):]
            for repo in self.repos:
                if rest.startswith(f"{repo}/tree/"):
                    return web.json_response([self._entry(repo, f) for f in sorted(os.listdir(self.repos[repo]))])
                if rest == repo or rest.startswith(f"{repo}/revision/"):
                    files = sorted(os.listdir(self.repos[repo]))
                    return web.json_response({"id": repo, "modelId": repo, "sha": self._commit(repo),
                                              "siblings": [{"rfilename": f} for f in files]})
            return web.json_response({"error": "Repository not found"}, status=404,
                                     headers={"X-Error-Code": "RepoNotFound"})
        found = self._split(path, "resolve")
        if found is None:
            return web.json_response({"error": "Repository not found"}, status=404,
                                     headers={"X-Error-Code": "RepoNotFound"})
        repo, rest = found
        _revision, _, filename = rest.partition("/")
        file = os.path.join(self.repos[repo], filename)
        if not filename or not os.path.isfile(file):
            return web.json_response({"error": "Entry not found"}, status=404,
                                     headers={"X-Error-Code": "EntryNotFound"})
        with open(file, "rb") as f:
            data = f.read()
        headers = {"X-Repo-Commit": self._commit(repo), "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Content-Length": str(len(data)), "Accept-Ranges": "bytes"}
        if request.method == "HEAD":
            return web.Response(status=200, headers=headers)
        return web.Response(body=data, headers=headers)
