"""``podium dashboards``: upload the Grafana dashboards of monitoring/ to a running Grafana.

Uses grafana-client (the maintained fork of grafana-api). The dashboards are pushed into one
folder (created when missing), overwriting earlier versions with the same uid, so pushing
again after editing the JSON is an update. The Prometheus datasource is a dashboard
variable (``datasource``); ``--datasource-uid`` sets its default to the target Grafana's
Prometheus datasource when that is not ``podium-prometheus``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

# shared/src/podium/cli/dashboards.py -> the repository root is four levels up.
_REPO_DASHBOARDS = Path(__file__).resolve().parents[4] / "monitoring" / "grafana" / "dashboards"
_CWD_DASHBOARDS = Path("monitoring") / "grafana" / "dashboards"
DEFAULT_FOLDER = "Podium"
DEFAULT_FOLDER_UID = "podium"
DATASOURCE_VARIABLE = "datasource"


def default_dashboards_dir() -> Path | None:
    for candidate in (_CWD_DASHBOARDS, _REPO_DASHBOARDS):
        if candidate.is_dir() and any(candidate.glob("*.json")):
            return candidate
    return None


def load_dashboards(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``*.json`` dashboard of ``directory``, checked for a uid and a title."""
    found: list[tuple[Path, dict[str, Any]]] = []
    uids: dict[str, Path] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            dashboard = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"{path}: not a readable JSON dashboard: {exc}") from exc
        if (
            not isinstance(dashboard, dict)
            or not dashboard.get("uid")
            or not dashboard.get("title")
        ):
            raise click.ClickException(f"{path}: a dashboard needs a uid and a title")
        uid = str(dashboard["uid"])
        if uid in uids:
            raise click.ClickException(f"{path}: uid {uid!r} is also used by {uids[uid]}")
        uids[uid] = path
        found.append((path, dashboard))
    if not found:
        raise click.ClickException(f"no *.json dashboard in {directory}")
    return found


def with_datasource(dashboard: dict[str, Any], datasource_uid: str | None) -> dict[str, Any]:
    """A copy of ``dashboard`` ready to upload: no numeric id (Grafana assigns it) and, when
    given, ``datasource_uid`` as the default of the datasource variable."""
    out: dict[str, Any] = json.loads(json.dumps(dashboard))
    out["id"] = None
    if datasource_uid:
        for var in out.get("templating", {}).get("list", []):
            if var.get("name") == DATASOURCE_VARIABLE and var.get("type") == "datasource":
                var["current"] = {"text": datasource_uid, "value": datasource_uid}
    return out


def _ensure_folder(api: Any, title: str, uid: str) -> None:
    from grafana_client.client import GrafanaClientError

    try:
        api.folder.get_folder(uid)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
        api.folder.create_folder(title, uid=uid)
        click.echo(f"created folder {title!r} (uid {uid})")


@click.group()
def dashboards() -> None:
    """Grafana dashboards (monitoring/grafana/dashboards)."""


@dashboards.command("push")
@click.option("--url", required=True, help="Grafana's base URL, e.g. http://localhost:3000.")
@click.option(
    "--token",
    envvar="GRAFANA_TOKEN",
    required=True,
    help="A Grafana service-account token with dashboard write access (env GRAFANA_TOKEN).",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder of dashboard JSON files (default: monitoring/grafana/dashboards).",
)
@click.option("--folder", default=DEFAULT_FOLDER, show_default=True, help="Grafana folder.")
@click.option("--folder-uid", default=DEFAULT_FOLDER_UID, show_default=True)
@click.option(
    "--datasource-uid",
    default=None,
    help="Default Prometheus datasource of the dashboards (default: podium-prometheus).",
)
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds per call.")
def push(
    url: str,
    token: str,
    directory: Path | None,
    folder: str,
    folder_uid: str,
    datasource_uid: str | None,
    timeout: float,
) -> None:
    """Upload every dashboard to the Grafana at --url, overwriting same-uid versions."""
    from grafana_client.api import GrafanaApi
    from grafana_client.client import GrafanaException

    directory = directory or default_dashboards_dir()
    if directory is None:
        raise click.ClickException(
            "monitoring/grafana/dashboards not found: run from the repository root or pass --dir"
        )
    boards = load_dashboards(directory)
    api: Any = GrafanaApi.from_url(url=url, credential=token, timeout=timeout)
    try:
        _ensure_folder(api, folder, folder_uid)
        for path, dashboard in boards:
            result = api.dashboard.update_dashboard(
                {
                    "dashboard": with_datasource(dashboard, datasource_uid),
                    "folderUid": folder_uid,
                    "overwrite": True,
                    "message": f"podium dashboards push ({path.name})",
                }
            )
            where = result.get("url", "") if isinstance(result, dict) else ""
            version = result.get("version", "?") if isinstance(result, dict) else "?"
            click.echo(f"pushed {dashboard['uid']} ({dashboard['title']}) v{version} {where}")
    except GrafanaException as exc:
        raise click.ClickException(f"Grafana at {url} refused: {exc}") from exc
    except OSError as exc:
        raise click.ClickException(f"cannot reach Grafana at {url}: {exc}") from exc
    click.echo(f"{len(boards)} dashboard(s) pushed to {url} (folder {folder!r})")
