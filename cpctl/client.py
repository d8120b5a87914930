"""A small REST client: where the server is, who we are, and errors that read well."""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

CONFIG = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "cpctl" / "config.json"
SKIP_DIRS = {".git", "__pycache__", ".venv", "venv", "node_modules", ".mypy_cache", ".ruff_cache"}


class ApiError(Exception):
    """A request the server refused; the message is the server's explanation."""


@dataclass
class Settings:
    url: str
    token: str


def load_settings(url: str | None = None, token: str | None = None) -> Settings:
    """Flags, then CP_URL / CP_TOKEN, then ~/.config/cpctl/config.json."""
    saved: dict[str, str] = {}
    if CONFIG.exists():
        try:
            saved = json.loads(CONFIG.read_text())
        except ValueError:
            saved = {}
    url = url or os.environ.get("CP_URL") or saved.get("url") or "http://127.0.0.1:8000"
    token = token or os.environ.get("CP_TOKEN") or saved.get("token") or ""
    return Settings(url=url.rstrip("/"), token=token)


def save_settings(settings: Settings) -> Path:
    CONFIG.parent.mkdir(parents=True, exist_ok=True)
    CONFIG.touch(mode=0o600)
    CONFIG.write_text(json.dumps({"url": settings.url, "token": settings.token}))
    return CONFIG


def _explain(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    if isinstance(body, dict):
        parts = []
        for field, problem in body.items():
            text = " ".join(problem) if isinstance(problem, list) else str(problem)
            parts.append(text if field == "detail" else f"{field}: {text}")
        return "; ".join(parts)
    return str(body)


class Client:
    def __init__(self, settings: Settings, timeout: float = 30) -> None:
        if not settings.token:
            raise ApiError("Not logged in: run `cpctl login` or set CP_URL and CP_TOKEN.")
        self.settings = settings
        self.http = httpx.Client(
            base_url=settings.url,
            headers={"Authorization": f"Bearer {settings.token}", "User-Agent": "cpctl"},
            timeout=timeout,
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"Cannot reach {self.settings.url}: {exc}") from None
        if response.status_code >= 400:
            raise ApiError(_explain(response))
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def download(self, url: str, target: Path, **params: Any) -> int:
        """Stream a GET's body into ``target`` (written whole or not at all); its bytes."""
        partial = target.with_name(f".{target.name}.partial")
        try:
            with self.http.stream("GET", url, params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(_explain(response))
                size = 0
                with open(partial, "wb") as out:
                    for data in response.iter_bytes():
                        out.write(data)
                        size += len(data)
        except httpx.HTTPError as exc:
            partial.unlink(missing_ok=True)
            raise ApiError(f"Cannot reach {self.settings.url}: {exc}") from None
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise ApiError(f"Cannot write {target}: {exc.strerror}") from None
        partial.replace(target)
        return size


def pack_directory(directory: Path) -> bytes:
    """A tar.gz of a working directory (without VCS, caches and virtualenvs)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory)
            if any(part in SKIP_DIRS for part in relative.parts) or path.is_symlink():
                continue
            if path.is_file():
                archive.add(path, arcname=str(relative), recursive=False)
    return buffer.getvalue()
